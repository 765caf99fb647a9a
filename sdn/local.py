"""The node's local containers: their records, address allocation and the persisted state."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from oaknet.model import Service
from sdn.logic_portmap import PortMapping

LOG = logging.getLogger(__name__)

# external_ids keys on a container's OVS interface: enough to rebuild the record after a restart.
EXT_SERVICE = "oaknet-service"
EXT_INSTANCE = "oaknet-instance"
EXT_NETNS = "oaknet-netns"
EXT_IPV4 = "oaknet-ipv4"
EXT_IPV6 = "oaknet-ipv6"
EXT_PORTS = "oaknet-port-mappings"
EXT_MAC = "oaknet-mac"

STATE_FILE = "agent-state.json"


class LocalError(ValueError):
    """A request the node cannot satisfy; ``field`` names the culprit, ``status`` the HTTP code."""

    def __init__(self, status: int, error: str, field: str, detail: str):
        super().__init__(f"{field}: {detail}")
        self.status = status
        self.error = error
        self.field = field
        self.detail = detail


def parse_port_mappings(text: str | None) -> tuple[PortMapping, ...]:
    """Parse ``"8080:80;53/udp"`` (host[:container][/tcp|/udp], ';'-separated)."""
    if text is not None and not isinstance(text, str):
        raise LocalError(400, "bad_request", "portMappings", "must be a string")
    try:
        return PortMapping.parse_list(text)
    except ValueError as exc:
        raise LocalError(
            400, "bad_request", "portMappings", str(exc).removeprefix("portMappings: ")
        ) from None


def mapping_text(mappings: tuple[PortMapping, ...]) -> str:
    """The node API's text form of port mappings (``8080:80/tcp;53:53/udp``)."""
    return ";".join(f"{m.host_port}:{m.container_port}/{m.protocol}" for m in mappings)


def port_name_of(service: str, instance: int) -> str:
    """The host-side veth/OVS port name of an instance: stable and at most 15 characters."""
    return f"okc{zlib.crc32(f'{service}#{instance}'.encode()):08x}"


@dataclass(frozen=True)
class Container:
    """A container attached on this node: its instance, port and namespace addresses."""

    service: str
    instance: int
    port_name: str
    netns: str
    ofport: int
    mac: str
    namespace_ip: str | None
    namespace_ip_v6: str | None
    port_mappings: tuple[PortMapping, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        """(service, instance number): unique on a node."""
        return (self.service, self.instance)

    def external_ids(self) -> dict[str, str]:
        """What the OVS interface carries so that a restarted agent can rebuild this record."""
        ids = {
            EXT_SERVICE: self.service,
            EXT_INSTANCE: str(self.instance),
            EXT_NETNS: self.netns,
            EXT_MAC: self.mac,
            EXT_PORTS: mapping_text(self.port_mappings),
        }
        if self.namespace_ip:
            ids[EXT_IPV4] = self.namespace_ip
        if self.namespace_ip_v6:
            ids[EXT_IPV6] = self.namespace_ip_v6
        return ids

    @classmethod
    def from_port(cls, port_name: str, ofport: int, ids: dict) -> Container | None:
        """Rebuild the record of an OVS port with our external_ids (None for foreign ports)."""
        if EXT_SERVICE not in ids or EXT_INSTANCE not in ids:
            return None
        try:
            return cls(
                service=ids[EXT_SERVICE],
                instance=int(ids[EXT_INSTANCE]),
                port_name=port_name,
                netns=ids.get(EXT_NETNS, ""),
                ofport=ofport,
                mac=ids.get(EXT_MAC, ""),
                namespace_ip=ids.get(EXT_IPV4),
                namespace_ip_v6=ids.get(EXT_IPV6),
                port_mappings=parse_port_mappings(ids.get(EXT_PORTS)),
            )
        except (ValueError, LocalError) as exc:
            LOG.warning("port %s: unreadable external_ids %s: %s", port_name, ids, exc)
            return None

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        data = asdict(self)
        data["port_mappings"] = mapping_text(self.port_mappings)
        return data


class AddressPool:
    """Namespace addresses of the node subnet: the first host is the gateway, never handed out.

    An index k maps to the k-th address of the IPv4 subnet and, with an IPv6 subnet, to the
    k-th address of that one, so a container's two addresses share their host part. New
    allocations continue after the last one (wrapping), so a released address is not handed
    out again at once.
    """

    def __init__(self, subnet_v4: str, subnet_v6: str | None):
        self.net4 = ipaddress.ip_network(subnet_v4)
        self.net6 = ipaddress.ip_network(subnet_v6) if subnet_v6 else None
        last = self.net4.num_addresses - 2  # without network and broadcast
        if self.net6 is not None:
            last = min(last, self.net6.num_addresses - 1)
        self.first, self.last = 2, last  # index 1 is the gateway
        self.used: set[int] = set()
        self.cursor = self.first - 1

    def allocate(self) -> tuple[int, str, str | None]:
        """Reserve the next free index; return it with its IPv4 and IPv6 addresses."""
        size = self.last - self.first + 1
        for step in range(1, size + 1):
            idx = self.first + (self.cursor - self.first + step) % size
            if idx not in self.used:
                self.used.add(idx)
                self.cursor = idx
                return (idx, *self.addresses(idx))
        raise LocalError(
            409, "subnet_exhausted", "node_subnet", f"no free address left in {self.net4}"
        )

    def addresses(self, idx: int) -> tuple[str, str | None]:
        """The IPv4 and IPv6 namespace addresses of index ``idx``."""
        v6 = str(self.net6.network_address + idx) if self.net6 is not None else None
        return str(self.net4.network_address + idx), v6

    def index_of(self, namespace_ip: str) -> int | None:
        """The index of an IPv4 namespace address of this subnet, None if outside it."""
        addr = ipaddress.ip_address(namespace_ip)
        if addr not in self.net4:
            return None
        idx = int(addr) - int(self.net4.network_address)
        return idx if self.first <= idx <= self.last else None

    def take(self, idx: int) -> None:
        """Mark ``idx`` as used (a container found at start)."""
        self.used.add(idx)

    def release(self, idx: int) -> None:
        """Give ``idx`` back."""
        self.used.discard(idx)


@dataclass
class SavedState:
    """What the agent keeps in its state dir between runs."""

    containers: list[Container]
    cursor: int | None = None
    costs: dict[str, float] | None = None  # the last published RTT ranking's costs (ms)


def save_state(state_dir: str, state: SavedState) -> None:
    """Write the local state atomically (a crash leaves the old or the new file)."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    costs = {ip: c for ip, c in (state.costs or {}).items() if c != float("inf")}
    data = {
        "version": 1,
        "cursor": state.cursor,
        "costs": costs,
        "containers": [c.to_dict() for c in state.containers],
    }
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".state-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, os.path.join(state_dir, STATE_FILE))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_state(state_dir: str) -> SavedState:
    """Read the persisted state; an empty one when there is no (readable) file."""
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return SavedState([])
    except (OSError, ValueError) as exc:
        LOG.warning("state file %s unreadable (%s); rebuilding from OVS only", path, exc)
        return SavedState([])
    out = []
    for item in data.get("containers", []):
        try:
            item = dict(item)
            item["port_mappings"] = parse_port_mappings(item.get("port_mappings") or "")
            out.append(Container(**item))
        except (TypeError, LocalError) as exc:
            LOG.warning("state file %s: skipping %r: %s", path, item, exc)
    costs = {str(k): float(v) for k, v in (data.get("costs") or {}).items()}
    return SavedState(out, data.get("cursor"), costs)


def restore_containers(
    ports: dict[str, dict],
    saved: SavedState,
    pool: AddressPool,
    remove_port: Callable[[str], None],
) -> list[Container]:
    """The containers of a restarted agent, from its bridge's ports and their external_ids.

    The bridge is the truth: a port whose veth died while the agent was down is removed, a
    container only in the state file is dropped. Their addresses are taken from ``pool``.
    """
    found = []
    for name, info in ports.items():
        c = Container.from_port(name, info.get("ofport") or 0, info.get("external_ids", {}))
        if c is None:
            continue
        if not info.get("ofport"):
            LOG.info(
                "container %s.%d: port %s lost its veth; removing it", c.service, c.instance, name
            )
            remove_port(name)
            continue
        found.append(c)
    known = {c.key for c in found}
    for c in saved.containers:
        if c.key not in known:
            LOG.info(
                "container %s.%d: in the state file but not on the bridge; dropped",
                c.service,
                c.instance,
            )
    for c in found:
        idx = pool.index_of(c.namespace_ip) if c.namespace_ip else None
        if idx is not None:
            pool.take(idx)
    if saved.cursor is not None:
        pool.cursor = saved.cursor
    return found


def check_attachable(
    table: Mapping[str, Service],
    containers: Mapping[tuple[str, int], Container],
    uplink: object | None,
    service: str,
    instance: int,
    mappings: tuple[PortMapping, ...],
    node_ip: str | None,
) -> None:
    """Raise LocalError unless (service, instance) may be attached here now.

    ``node_ip``: this node's, to refuse an instance placed on another node (None: no check).
    """
    svc = table.get(service)
    if svc is None:
        detail = f"{service} is not in the service table"
        raise LocalError(404, "unknown_service", "serviceName", detail)
    inst = svc.instance(instance)
    if inst is None:
        detail = f"{service} has no instance {instance} in the table"
        raise LocalError(404, "unknown_instance", "instanceNumber", detail)
    if node_ip is not None and inst.node_ip not in (None, node_ip):
        # Taking it over would leave two containers answering for one instance IP.
        detail = f"{service} instance {instance} is placed on node {inst.node_ip}, not here"
        raise LocalError(409, "placed_elsewhere", "instanceNumber", detail)
    if (service, instance) in containers:
        detail = f"{service} instance {instance} is attached already"
        raise LocalError(409, "duplicate_instance", "instanceNumber", detail)
    taken = {(m.host_port, m.protocol): c for c in containers.values() for m in c.port_mappings}
    for m in mappings:
        other = taken.get((m.host_port, m.protocol))
        if other is not None:
            detail = (
                f"host port {m.host_port}/{m.protocol} is mapped to {other.service} "
                f"instance {other.instance} already"
            )
            raise LocalError(409, "port_conflict", "portMappings", detail)
    if mappings and uplink is None:
        detail = "this node has no underlay bridge to expose ports on"
        raise LocalError(409, "no_uplink", "portMappings", detail)
