"""The service table as a node sees it: read from a static file (offline mode) and validated."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping

import yaml

from oaknet.model import ModelError, Service

LOG = logging.getLogger(__name__)


class TableError(ValueError):
    """A table file that cannot be used; the text says where."""


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
    return table, entries


def _read(path: str):
    """The decoded content of a table file (JSON, or YAML for other suffixes)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise TableError(f"{path}: {exc.strerror}") from None
    try:
        return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise TableError(f"{path}: not valid JSON/YAML: {exc}") from None


def load_table(path: str) -> dict[str, Service]:
    """Read and validate the table file at ``path`` (JSON, or YAML for other suffixes)."""
    try:
        return parse_table(_read(path))
    except TableError as exc:
        raise TableError(f"{path}: {exc}") from None


class TableFile:
    """A table file watched by modification time: ``changed()`` re-reads it when it changed.

    Only entries that differ from the last read are parsed and validated again, so one
    changed service in a table of 10k costs the file's decoding, not 10k validations.
    """

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple | None = None
        self._entries: Parsed = {}

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
            table, self._entries = _parse(_read(self.path), self._entries)
        except TableError as exc:
            raise TableError(f"{self.path}: {exc}") from None
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
