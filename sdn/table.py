"""The service table as a node sees it: read from a static file (offline mode) and validated.

Three file forms: JSON (a list of services or ``{"services": [...]}``), YAML (any other
suffix), and JSON Lines (suffix ``.jsonl``: one service object per line; blank lines and lines
starting with ``#`` are skipped). A JSON Lines file is compared with the last read by its
bytes, so one changed service costs one line's decoding whatever the table's size.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
import json
import logging
import os
from collections.abc import Mapping

import yaml

from oaknet.model import ModelError, Service

LOG = logging.getLogger(__name__)


class TableError(ValueError):
    """A table file that cannot be used; the text says where."""


JSONL_SUFFIX = ".jsonl"

# A table entry as the file had it, and the service made of it (reused while it is unchanged).
Parsed = dict[str, tuple[dict, Service]]


def parse_table(data, known: Parsed | None = None) -> dict[str, Service]:
    """Services by name from a list of Service dicts (or ``{"services": [...]}``)."""
    return _parse(data, known or {})[0]


def _parse(data, known: Parsed) -> tuple[dict[str, Service], Parsed]:
    """The table and its entries; an entry equal to its ``known`` one is not parsed again."""
    if isinstance(data, dict) and "services" in data:
        data = data["services"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise TableError("the table must be a list of services or {'services': [...]}")
    table: dict[str, Service] = {}
    entries: Parsed = {}
    for pos, item in enumerate(data):
        name = item.get("name") if isinstance(item, dict) else None
        seen = known.get(name) if isinstance(name, str) else None
        if seen is not None and seen[0] == item:
            svc = seen[1]
        else:
            try:
                svc = Service.from_dict(item)
                svc.validate()
            except ModelError as exc:
                raise TableError(f"service #{pos}: {exc}") from None
        if svc.name in table:
            raise TableError(f"service {svc.name} is listed twice")
        table[svc.name] = svc
        entries[svc.name] = (item, svc)
    owners: dict[str, str] = {}
    for pos, svc in enumerate(table.values()):
        for addr in claims(svc):
            other = owners.setdefault(addr, svc.name)
            if other != svc.name:
                raise TableError(f"service #{pos}: address {addr} is {other}'s already")
    return table, entries


def claims(svc: Service) -> list[str]:
    """The semantic addresses ``svc`` holds: its service IPs and its instances' IPs."""
    out = [a for sip in svc.service_ips for a in (sip.ipv4, sip.ipv6) if a]
    out += [a for i in svc.instances for a in (i.instance_ip, i.instance_ip_v6) if a]
    # One spelling per address: IPv6 has several.
    return [ipaddress.ip_address(a).compressed if ":" in a else a for a in out]


def parse_lines(data: bytes) -> dict[str, Service]:
    """Services by name from a JSON Lines table (one service object per line)."""
    return _parse_all(data).table


@dataclasses.dataclass
class _Lines:
    """A JSON Lines table as read: its bytes, where each line ends, what each line holds."""

    data: bytes
    ends: list[int]  # offset after each line's newline (after the last byte for the last line)
    services: list[Service | None]  # by line; None for blank and comment lines
    table: dict[str, Service]
    owners: dict[str, str]  # semantic address -> the name of the service that holds it


def _parse_all(data: bytes) -> _Lines:
    """Decode and validate every line."""
    # JSON text holds no raw line breaks: a service never spans two lines.
    pieces = data.split(b"\n")
    if not pieces[-1]:
        pieces.pop()  # after the last newline
    ends: list[int] = []
    services: list[Service | None] = []
    pos = 0
    for number, piece in enumerate(pieces, 1):
        pos += len(piece) + 1
        ends.append(min(pos, len(data)))
        services.append(_parse_line(piece, number))
    return _Lines(data, ends, services, *_index(services))


def _index(services: list[Service | None]) -> tuple[dict[str, Service], dict[str, str]]:
    """The services by name and the owners of their addresses; TableError naming the lines
    of a service listed twice or of an address two services hold."""
    table: dict[str, Service] = {}
    owners: dict[str, str] = {}
    first: dict[str, int] = {}
    for number, svc in enumerate(services, 1):
        if svc is None:
            continue
        if svc.name in table:
            raise TableError(
                f"line {number}: service {svc.name} is listed twice (first on line "
                f"{first[svc.name]})"
            )
        table[svc.name] = svc
        first[svc.name] = number
        for addr in claims(svc):
            other = owners.setdefault(addr, svc.name)
            if other != svc.name:
                raise TableError(
                    f"line {number}: address {addr} is {other}'s already (line {first[other]})"
                )
    return table, owners


def _reparse(old: _Lines, data: bytes) -> _Lines:
    """``data`` read against ``old``: only the lines between the common start and the common
    end of both are decoded; every other line keeps its service (the same object).

    Finding those ends compares bytes (C speed, ~0.3 ms for 3 MB), so one changed line in
    10k costs about a millisecond instead of decoding every line.
    """
    size_old, size = len(old.data), len(data)
    head = _common_prefix(old.data, data, min(size_old, size))
    tail = _common_suffix(old.data, data, min(size_old, size) - head)
    ends = old.ends
    # Old lines [0, first) lie in the common start with their newline.
    first = bisect.bisect_right(ends, head)
    if first and ends[first - 1] == size_old and not old.data.endswith(b"\n"):
        first -= 1  # an unterminated last line may go on in the new data
    # Old lines [last, ...) start after the common end's first byte: the byte before them,
    # a newline, is common too, so they are whole lines in the new data as well.
    last = max(first, min(len(ends), bisect.bisect_right(ends, size_old - tail) + 1))
    begin = ends[first - 1] if first else 0
    stop_old = ends[last - 1] if last else 0
    stop = stop_old + size - size_old
    known = {
        piece.strip(): svc
        for piece, svc in zip(old.data[begin:stop_old].split(b"\n"), old.services[first:last])
        if svc is not None
    }
    pieces = data[begin:stop].split(b"\n")
    if not pieces[-1]:
        pieces.pop()
    mid_ends: list[int] = []
    mid: list[Service | None] = []
    pos = begin
    for number, piece in enumerate(pieces, first + 1):
        pos += len(piece) + 1
        mid_ends.append(min(pos, stop))
        mid.append(known.get(piece.strip()) or _parse_line(piece, number))
    shift = size - size_old
    tail_ends = ends[last:] if not shift else [end + shift for end in ends[last:]]
    services = old.services[:first] + mid + old.services[last:]
    replaced = _replace(old.table, old.owners, old.services[first:last], mid)
    table, owners = replaced if replaced is not None else _index(services)  # raises, naming lines
    return _Lines(data, ends[:first] + mid_ends + tail_ends, services, table, owners)


def _replace(
    table: dict[str, Service],
    owners: dict[str, str],
    gone: list[Service | None],
    new: list[Service | None],
) -> tuple[dict[str, Service], dict[str, str]] | None:
    """``table`` without ``gone`` and with ``new``, and ``owners`` with their addresses moved
    along (updated in place: it is the old read's, which this one replaces); None, with both
    untouched, when a name or an address would be there twice."""
    dropped = {svc.name for svc in gone if svc is not None}
    added: dict[str, Service] = {}
    claimed: dict[str, str] = {}
    for svc in new:
        if svc is None:
            continue
        if svc.name in added or (svc.name in table and svc.name not in dropped):
            return None
        added[svc.name] = svc
        for addr in claims(svc):
            other = claimed.setdefault(addr, svc.name)
            held = owners.get(addr)
            if other != svc.name or (held not in (None, svc.name) and held not in dropped):
                return None
    out = dict(table)
    out.update(added)  # a name already there keeps its place
    for name in dropped - added.keys():
        del out[name]
    for svc in gone:
        if svc is not None:
            for addr in claims(svc):
                if owners.get(addr) == svc.name:
                    del owners[addr]
    owners.update(claimed)
    return out, owners


_CHUNK = 1 << 16  # compare this many bytes at once: slices of it cost little to copy


def _common_prefix(a: bytes, b: bytes, limit: int) -> int:
    """How many leading bytes ``a`` and ``b`` share (at most ``limit``)."""
    low = 0
    while low < limit:
        high = min(low + _CHUNK, limit)
        if a[low:high] != b[low:high]:
            break
        low = high
    else:
        return limit
    while high - low > 1:  # a[:low] == b[:low], a[:high] != b[:high]
        mid = (low + high) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid
    return low


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """How many trailing bytes ``a`` and ``b`` share (at most ``limit``)."""
    size_a, size_b = len(a), len(b)
    low = 0
    while low < limit:
        high = min(low + _CHUNK, limit)
        if a[size_a - high : size_a - low] != b[size_b - high : size_b - low]:
            break
        low = high
    else:
        return limit
    while high - low > 1:  # the last low bytes are common, the last high are not
        mid = (low + high) // 2
        if a[size_a - mid : size_a - low] == b[size_b - mid : size_b - low]:
            low = mid
        else:
            high = mid
    return low


def _parse_line(piece: bytes, number: int) -> Service | None:
    """The validated service of one JSON Lines line (None for a blank or comment line)."""
    line = piece.strip()
    if not line or line.startswith(b"#"):
        return None
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        where = f"line {number}, column {exc.colno}"
        raise TableError(f"{where}: not valid JSON: {exc.msg}") from None
    except ValueError as exc:  # not UTF-8
        raise TableError(f"line {number}: not valid JSON: {exc}") from None
    try:
        svc = Service.from_dict(item)
        svc.validate()
    except ModelError as exc:
        raise TableError(f"line {number}: {exc}") from None
    LOG.debug("table line %d decoded: %s", number, svc.name)
    return svc


def _read_bytes(path: str) -> bytes:
    """The raw content of a table file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise TableError(exc.strerror) from None
    _check_not_empty(data)
    return data


def _check_not_empty(data: bytes | str) -> None:
    """Refuse a file of zero bytes: what a writer leaves between truncating and writing."""
    if not data:
        raise TableError(
            "the file is empty (a table without services is a comment line, or [] in JSON)"
        )


def _read(path: str):
    """The decoded content of a table file (JSON, or YAML for other suffixes)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise TableError(exc.strerror) from None
    _check_not_empty(text)
    try:
        return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise TableError(f"not valid JSON/YAML: {exc}") from None


def load_table(path: str) -> dict[str, Service]:
    """Read and validate the table file at ``path`` (JSON, JSON Lines, or YAML)."""
    try:
        if path.endswith(JSONL_SUFFIX):
            return parse_lines(_read_bytes(path))
        return parse_table(_read(path))
    except TableError as exc:
        raise TableError(f"{path}: {exc}") from None


class TableFile:
    """A table file watched by modification time: ``changed()`` re-reads it when it changed.

    Only entries that differ from the last read are parsed and validated again; a service
    that did not change is the same object as before. A JSON or YAML file is still decoded
    whole on every change (~45 ms at 10k services); a JSON Lines file is not: it is compared
    with the last good read byte for byte, and only the lines between the common start and
    end are decoded (~3 ms with the read for one changed service in 10k). Its table keeps
    the order of the first read: a changed service stays in its place, a new one comes last.
    """

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple | None = None
        self._entries: Parsed = {}
        self._lines: _Lines | None = None
        self.last_error: str | None = None  # why the last read was refused (None: it was not)

    def _current_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read(self) -> dict[str, Service]:
        """Read the file now and remember its stamp."""
        self._stamp = self._current_stamp()
        try:
            if self.path.endswith(JSONL_SUFFIX):
                data = _read_bytes(self.path)
                old = self._lines
                self._lines = _reparse(old, data) if old is not None else _parse_all(data)
                table = dict(self._lines.table)  # the caller's to keep
            else:
                table, self._entries = _parse(_read(self.path), self._entries)
        except TableError as exc:
            self.last_error = f"{self.path}: {exc}"
            raise TableError(self.last_error) from None
        self.last_error = None
        return table

    def changed(self) -> dict[str, Service] | None:
        """The new table when the file changed since the last read, else None."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return None
        table = self.read()
        LOG.info("service table %s changed: %d services", self.path, len(table))
        return table


def place_local(svc: Service, attached: Mapping[tuple[str, int], object], node_ip: str) -> Service:
    """``svc`` with this node's attached containers as the placement of their instances.

    ``attached`` maps (service, instance) to a record with namespace_ip/namespace_ip_v6. An
    instance the table places on this node but that is not attached here has no address.
    """
    instances = []
    for inst in svc.instances:
        c = attached.get((svc.name, inst.number))
        if c is not None:
            inst = dataclasses.replace(
                inst,
                node_ip=node_ip,
                namespace_ip=c.namespace_ip,
                namespace_ip_v6=c.namespace_ip_v6,
                status="running",
            )
        elif inst.node_ip == node_ip:
            inst = dataclasses.replace(inst, namespace_ip=None, namespace_ip_v6=None)
        instances.append(inst)
    return dataclasses.replace(svc, instances=instances)


def remote_addresses(table: Mapping[str, Service], peers: Mapping[str, object]) -> set[str]:
    """The instance IPs of every instance the table places on one of ``peers``."""
    out: set[str] = set()
    for svc in table.values():
        for inst in svc.instances:
            if inst.node_ip in peers:
                out.update(a for a in (inst.instance_ip, inst.instance_ip_v6) if a)
    return out
