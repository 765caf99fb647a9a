"""The node agent's state and operations: containers, peers, the table and the desired flows.

No OpenFlow here: every change recomputes the affected owners with ``sdn.logic.Pipeline`` and
hands the difference (a ``Delta``) to the switch side, which sends it as one bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import ipaddress
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from oaknet.model import Service
from sdn import pipeline as pl
from sdn.agent_table import TableOps
from sdn.config import AgentConfig
from sdn.conntrack import Conntrack, ConntrackError
from sdn.delta import Delta, SwitchSink, Unit, diff_units
from sdn.local import (
    AddressPool,
    Container,
    SavedState,
    check_attachable,
    load_state,
    parse_port_mappings,
    port_name_of,
    restore_containers,
    save_state,
)
from sdn.logic import LocalPort, NodeContext, Peer, Pipeline, peer_owner, port_owner
from sdn.logic_portmap import Uplink
from sdn.nodeops import NodeOps
from sdn.spec import (
    NODE_OWNER,
    Bucket,
    Flow,
    GroupSpec,
    owner_id,
    punt_owner,
    service_owner,
)
from sdn.table import place_local
from sdn.tunnels import Tunnels

LOG = logging.getLogger(__name__)

PUNT_UNIT = "punt"
UPLINK_UNIT = "uplink"
PUNT_KINDS = {owner_id(punt_owner(kind)): kind for kind in ("reject", "unknown", "peer")}
ANY_PEER = "any"  # the peer key of the remote_ip=flow tunnel port's flows
LAST_RESORT_BUCKET = 0xFFFFFEFF  # bucket id of a closest group's unwatched last bucket
GC_PAUSE_UNITS = 100  # recomputing more owners than this runs without garbage collection


class ClusterHooks(Protocol):
    """What the agent asks of cluster mode around attach and detach (``sdn.cluster``)."""

    def learn_service(self, service: str, instance: int) -> None:
        """Have ``service`` in the table before an attach (LocalError when it cannot be)."""

    def report_deployed(self, c: Container) -> None:
        """Tell the cluster that ``c`` runs here."""

    def report_undeployed(self, c: Container) -> None:
        """Tell the cluster that ``c`` no longer runs here."""


def with_last_resort(group: GroupSpec, live_port: int) -> GroupSpec:
    """A fast-failover (closest) group with one more bucket: its first choice again, watching
    ``live_port`` (the any-peer tunnel port: no BFD, so always live).

    Its buckets watch their port's liveness, and a tunnel port is live only once its BFD
    session is up, 1-3 s after the port was made (on demand, just before the first packet).
    Without this bucket that packet would be dropped; with it, it goes to the first choice.
    When every other bucket is really dead, the packet is lost either way.
    """
    if group.type != "fast_failover" or not group.buckets:
        return group
    first = group.buckets[0]
    last = Bucket(first.actions, first.weight, live_port, LAST_RESORT_BUCKET)
    return dataclasses.replace(group, buckets=(*group.buckets, last))


@contextlib.contextmanager
def paused_gc(pause: bool = True) -> Iterator[None]:
    """No cyclic garbage collection inside (when ``pause``).

    Records, tuples and wire bytes of flows hold no reference cycles, yet building 70k flows
    (10k services) triggers collections that walk every live object again and again: 40% of
    the pipeline's time. Afterwards what exists is frozen (``gc.freeze``): the flows live long,
    refcounting frees them when replaced, and the collector no longer walks them in each full
    pass (~0.4 s with 10k services, which delayed the next table change by as much).
    """
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def instance_mac(service: str, instance: int) -> str:
    """A stable, locally administered MAC for an instance's container interface."""
    digest = zlib.crc32(f"mac:{service}#{instance}".encode()).to_bytes(4, "big")
    return ":".join(f"{b:02x}" for b in (0x02, 0x6F, *digest))


class Agent(TableOps):
    """One node's agent state; every public operation is thread-safe."""

    def __init__(
        self, cfg: AgentConfig, ops: NodeOps | None = None, conntrack: Conntrack | None = None
    ):
        self.cfg = cfg
        self.ops = ops or NodeOps(cfg)
        self.conntrack = conntrack or Conntrack(cfg.ovs_run_dir)
        self.ctx = NodeContext(
            cfg.node_ip,
            cfg.subnet_v4,
            cfg.subnet_v6,
            cfg.gateway_mac,
            cfg.service_ranges_v4,
            cfg.service_ranges_v6,
        )
        self.pipeline = Pipeline(self.ctx)
        self.pool = AddressPool(cfg.subnet_v4, cfg.subnet_v6)
        self.sink: SwitchSink | None = None
        self.file_table: dict[str, Service] = {}
        self.table: dict[str, Service] = {}  # the file table with local placements
        self.containers: dict[tuple[str, int], Container] = {}
        self.peers: dict[str, Peer] = {}
        self.costs: dict[str, float] = {}
        self.registered_id: str | None = None
        self.uplink: Uplink | None = None
        # Cluster mode: peers follow the table (a tunnel to every node IP in it) and an
        # any-peer port receives from nodes without their own tunnel here.
        self.tunnels = Tunnels(self.ops, cfg.node_ip, cfg.peers, dynamic=cfg.cluster_mode)
        self.cluster: ClusterHooks | None = None
        self.any_port: int | None = None
        self.on_peers: Callable[[list[str]], None] | None = None
        self._phy_flows: list[Flow] | None = None  # what the underlay bridge was given
        self._units: dict[str, Unit] = {}
        self._group_owner: dict[int, str] = {}
        self._lock = threading.RLock()  # guards the state above
        self._ops = threading.Lock()  # serialises mutations (attach, detach, updates)

    # -- start -----------------------------------------------------------------------------

    def start(self, table: dict[str, Service], learned_peers: Iterable[str] = ()) -> None:
        """Bring up bridge and tunnels, rebuild local state from OVS, compute every owner."""
        self.ops.ensure_bridge()
        # The same dict as self.peers from here on.
        peers = self.tunnels.start(table, learned_peers)
        if self.tunnels.dynamic:
            self.any_port = self.ops.ensure_any_peer_tunnel()
        uplink = self.ops.ensure_uplink()
        restored, costs = self._restore()
        with self._ops, self._lock:
            self.peers = peers
            self.uplink = uplink
            # The last measured ranking until the RTT meter has a new one: a restart must not
            # re-order the closest groups.
            self.costs = {ip: costs.get(ip, float("inf")) for ip in peers}
            self.file_table = dict(table)
            self.containers = {c.key: c for c in restored}
            self.table = {name: self._effective(svc) for name, svc in self.file_table.items()}
            units = [NODE_OWNER, PUNT_UNIT, UPLINK_UNIT, *(peer_owner(ip) for ip in peers)]
            units += [peer_owner(ANY_PEER)] if self.any_port else []
            units += [port_owner(c.port_name) for c in restored]
            units += [service_owner(name) for name in self.table]
            self._recompute(units)
            self._sync_phy(force=True)
        LOG.info(
            "agent %s ready: %d services, %d local containers, %d peers, %d flows",
            self.cfg.node_name,
            len(self.table),
            len(restored),
            len(peers),
            sum(len(u.flows) for u in self._units.values()),
        )

    def _restore(self) -> tuple[list[Container], dict[str, float]]:
        """Containers from the OVS ports (checked against the state file), and the persisted
        peer costs; ports whose veth is gone are removed."""
        saved = load_state(self.cfg.state_dir)
        found = restore_containers(self.ops.list_ports(), saved, self.pool, self.ops.detach)
        self.costs = dict(saved.costs or {})
        self._save(found)
        return found, self.costs

    # -- containers ------------------------------------------------------------------------

    def attach(
        self, netns: str | int, service: str, instance: int, port_mappings: str | None = None
    ) -> Container:
        """Attach a container of (service, instance); all or nothing; LocalError on bad input."""
        mappings = parse_port_mappings(port_mappings)
        start = time.monotonic()
        if self.cluster is not None:
            self.cluster.learn_service(service, instance)
        with self._ops:
            with self._lock:
                check_attachable(
                    self.file_table,
                    self.containers,
                    self.uplink,
                    service,
                    instance,
                    mappings,
                    # Offline, the table file may lag behind the runtime; the cluster does not.
                    self.cfg.node_ip if self.cluster is not None else None,
                )
                idx, ip4, ip6 = self.pool.allocate()
            port_name = port_name_of(service, instance)
            mac = instance_mac(service, instance)
            record = Container(
                service, instance, port_name, str(netns), 0, mac, ip4, ip6, mappings
            )
            plumbing = time.monotonic()
            try:
                ofport = self.ops.attach(netns, record)
            except BaseException:
                with self._lock:
                    self.pool.release(idx)
                raise
            plumbing = time.monotonic() - plumbing
            record = dataclasses.replace(record, ofport=ofport)
            with self._lock:
                self.containers[record.key] = record
                self._refresh_service(service)
                delta = self._recompute([port_owner(port_name), service_owner(service)])
                self._save(list(self.containers.values()))
            self._submit(delta, wait=bool(mappings))
            if mappings:
                self._sync_phy()
        LOG.info(
            "attached %s instance %d as %s (%s, %s) in %.0f ms (veth and OVS port %.0f ms)",
            service,
            instance,
            port_name,
            ip4,
            ip6 or "-",
            (time.monotonic() - start) * 1000,
            plumbing * 1000,
        )
        if self.cluster is not None:
            reporting = time.monotonic()
            self.cluster.report_deployed(record)
            LOG.debug(
                "deploy of %s instance %d reported in %.0f ms",
                service,
                instance,
                (time.monotonic() - reporting) * 1000,
            )
        return record

    def detach(self, service: str, instance: int) -> Container | None:
        """Detach (service, instance) if attached: flows, then conntrack, then the veth."""
        with self._ops:
            with self._lock:
                record = self.containers.pop((service, instance), None)
                if record is None:
                    return None
                self._refresh_service(service)
                delta = self._recompute([port_owner(record.port_name), service_owner(service)])
                self._save(list(self.containers.values()))
            # New connections must stop reaching the instance before its entries go, or a
            # packet in between would create a new entry to it.
            self._submit(delta, wait=True)
            if record.port_mappings:
                self._sync_phy()
            self._flush([record.namespace_ip, record.namespace_ip_v6])
            self.ops.detach(record.port_name)
            with self._lock:
                idx = self.pool.index_of(record.namespace_ip) if record.namespace_ip else None
                if idx is not None:
                    self.pool.release(idx)
                self._save(list(self.containers.values()))
        LOG.info("detached %s instance %d (%s)", service, instance, record.port_name)
        if self.cluster is not None:
            self.cluster.report_undeployed(record)
        return record

    def detach_gone(self) -> list[Container]:
        """Detach the containers whose veth has disappeared (their namespace ended without a
        detach: the container stopped or was removed); in cluster mode the cluster is told."""
        with self._lock:
            ports = {c.port_name: c for c in self.containers.values()}
        if not ports:
            return []
        gone = []
        for name in self.ops.missing_veths(sorted(ports)):
            c = ports[name]
            LOG.info(
                "%s instance %d: its veth %s is gone; detaching it", c.service, c.instance, name
            )
            if self.detach(c.service, c.instance) is not None:
                gone.append(c)
        return gone

    def local_port(self, c: Container) -> LocalPort:
        """The pipeline's view of a local container (with its instance IPs from the table)."""
        svc = self.file_table.get(c.service)
        inst = svc.instance(c.instance) if svc is not None else None
        ip4, ip6 = (inst.instance_ip, inst.instance_ip_v6) if inst else (None, None)
        return LocalPort(
            c.port_name,
            c.ofport,
            c.mac,
            c.namespace_ip,
            c.namespace_ip_v6,
            c.service,
            c.instance,
            ip4,
            ip6,
            c.port_mappings,
        )

    # -- views for the switch and the API --------------------------------------------------

    @contextlib.contextmanager
    def quiet(self) -> Iterator[bool]:
        """Hold mutations off while the caller compares the switch with ``desired()``.

        Yields False (holding nothing) when a mutation is under way: its delta is not applied
        yet, so the switch is expected to differ.
        """
        if not self._ops.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            self._ops.release()

    def desired(self) -> tuple[list[Flow], list[GroupSpec]]:
        """Every flow and group the switch should hold now."""
        with self._lock:
            flows = [f for u in self._units.values() for f in u.flows.values()]
            groups = [g for u in self._units.values() for g in u.groups.values()]
        return flows, groups

    def counts(self) -> tuple[int, int]:
        """How many flows and groups are desired."""
        with self._lock:
            return (
                sum(len(u.flows) for u in self._units.values()),
                sum(len(u.groups) for u in self._units.values()),
            )

    @staticmethod
    def punt_kind(cookie: int) -> str | None:
        """Why a packet was sent to the agent ('reject', 'unknown'), from its flow's cookie."""
        return PUNT_KINDS.get(cookie >> 32)

    def services(self) -> list[Service]:
        """The table as this node uses it (local placements applied)."""
        with self._lock:
            return list(self.table.values())

    def local_services(self) -> set[str]:
        """Services with an instance attached to or placed on this node."""
        with self._lock:
            own = self.cfg.node_ip
            out = {c.service for c in self.containers.values()}
            out.update(
                n for n, s in self.table.items() if any(i.node_ip == own for i in s.instances)
            )
            return out

    def list_containers(self) -> list[Container]:
        """The containers attached on this node."""
        with self._lock:
            return sorted(self.containers.values(), key=lambda c: c.key)

    # -- helpers ---------------------------------------------------------------------------

    def _effective(self, svc: Service) -> Service:
        # Most services have nothing on this node: share the record instead of copying it
        # (10k services with 3 instances each: 40k fewer records to build and hold).
        own = self.cfg.node_ip
        if not any(
            i.node_ip == own or (svc.name, i.number) in self.containers for i in svc.instances
        ):
            return svc
        return place_local(svc, self.containers, own)

    def _refresh_service(self, name: str) -> None:
        svc = self.file_table.get(name)
        if svc is not None:
            self.table[name] = self._effective(svc)

    def _compute(self, unit: str) -> Unit:
        flows: list[Flow] = []
        groups: list[GroupSpec] = []
        kind, _, key = unit.partition(":")
        if unit == NODE_OWNER:
            flows = self.pipeline.node_flows()
        elif unit == PUNT_UNIT:
            flows = self.pipeline.punt_flows()
        elif unit == UPLINK_UNIT:
            flows = self.pipeline.uplink_flows(self.uplink) if self.uplink else []
        elif kind == "port":
            c = next((c for c in self.containers.values() if c.port_name == key), None)
            if c is not None:
                flows = self.pipeline.port_flows(self.local_port(c))
        elif kind == "peer":
            if key == ANY_PEER and self.any_port:
                flows = self.pipeline.any_peer_flows(self.any_port)
            elif key in self.peers:
                flows = self.pipeline.peer_flows(self.peers[key])
        elif kind == "service":
            svc = self.table.get(key)
            if svc is not None:
                ports = {
                    c.port_name: self.local_port(c)
                    for c in self.containers.values()
                    if c.service == key
                }
                flows, groups = self.pipeline.service_flows(svc, ports, self.peers, self.costs)
                if self.any_port:
                    groups = [with_last_resort(g, self.any_port) for g in groups]
        else:
            raise ValueError(f"unknown owner unit {unit!r}")
        return Unit({f.cookie: f for f in flows}, {g.group_id: g for g in groups})

    def _recompute(self, units: Iterable[str]) -> Delta:
        """Recompute ``units`` (under the state lock) and return the change against before."""
        units = list(dict.fromkeys(units))
        with paused_gc(len(units) > GC_PAUSE_UNITS):
            return self._recompute_units(units)

    def _recompute_units(self, units: list[str]) -> Delta:
        delta = Delta()
        for unit in units:
            new = self._compute(unit)
            for gid in list(new.groups):
                holder = self._group_owner.setdefault(gid, unit)
                if holder != unit:
                    LOG.error(
                        "group %#x of %s is held by %s; %s keeps it", gid, unit, holder, holder
                    )
                    new.groups.pop(gid)
            old = self._units.get(unit, Unit())
            for gid in old.groups:
                if gid not in new.groups and self._group_owner.get(gid) == unit:
                    del self._group_owner[gid]
            diff_units(old, new, delta)
            if new.flows or new.groups:
                self._units[unit] = new
            else:
                self._units.pop(unit, None)
        return delta

    def _sync_phy(self, force: bool = False) -> None:
        """Give the underlay bridge its flows (mapped host ports) when they changed."""
        if self.uplink is None:
            return
        with self._lock:
            ports = [self.local_port(c) for c in self.containers.values() if c.port_mappings]
            flows = self.pipeline.phy_flows(self.uplink, ports)
        if not force and flows == self._phy_flows:
            return
        try:
            self.ops.replace_phy_flows(flows)
            self._phy_flows = flows
        except (RuntimeError, OSError) as exc:
            LOG.error("underlay bridge flows not updated: %s", exc)

    def settled(self) -> None:
        """Return once the switch applied every change computed so far (or after 10 s)."""
        self._submit(Delta(), wait=True)

    def _submit(self, delta: Delta, wait: bool = False) -> None:
        # An empty delta that is waited for still goes through the switch's queue: it returns
        # once every delta queued before it was applied.
        sink = self.sink
        if sink is None or not (delta or wait):
            return
        done = sink.submit(delta)
        if wait and sink.connected() and not done.wait(10):
            LOG.warning("switch did not confirm %s within 10 s", delta.summary())

    def _flush(self, addresses: Iterable[str | None]) -> None:
        wanted = [a for a in addresses if a]
        if not wanted:
            return
        try:
            # One dump first: most removed addresses have no connections, and a flush and
            # its check are two calls to ovs-vswitchd per address.
            present = self.conntrack.reply_srcs(pl.ZONE_DNAT)
        except ConntrackError as exc:
            LOG.warning("conntrack dump failed (%s): flushing every address", exc)
            present = None
        for addr in wanted:
            if present is not None and ipaddress.ip_address(addr).compressed not in present:
                continue
            try:
                self.conntrack.flush_reply_src(pl.ZONE_DNAT, addr)
            except ConntrackError as exc:
                LOG.warning("conntrack flush of %s failed: %s", addr, exc)

    def _save(self, containers: list[Container]) -> None:
        save_state(self.cfg.state_dir, SavedState(containers, self.pool.cursor, self.costs))
