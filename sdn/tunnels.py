"""The node's tunnel peers: the configured ones, and in cluster mode one per node IP of the table.

In cluster mode a tunnel port (with BFD) is made for every other node that hosts an instance of
a service in the node's table, and removed once no service places an instance there. A node
that made a tunnel to this one is *learned* from its BFD packets (they arrive on the any-peer
port) and gets a tunnel back, so BFD, and the fast-failover liveness of closest groups, comes
up on both ends; a learned peer goes when its BFD session stays down (the other end removed
its tunnel). A peer removed for lack of services is not learned again for ``HOLD_S``, so two
nodes that learned each other let go instead of keeping each other's tunnels alive.

A new port is *planned* first (its OpenFlow port number chosen), its flows are installed, and
only then is it made: from the moment it exists the peer's packets arrive on it instead of the
any-peer port, and they must find their flows there. For the same reason a port is removed
before its flows. The OVSDB work runs outside the agent's state lock; ``follow`` only books.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from oaknet.model import Service
from sdn.logic import Peer

LOG = logging.getLogger(__name__)

LEARN_GRACE_S = 15.0  # a learned tunnel's BFD gets this long to come up
LEARNED_DOWN_S = 10.0  # a learned peer whose BFD is down this long is removed
HOLD_S = 30.0  # a peer removed for lack of services is not learned again for this long
# Planned tunnel ports take OpenFlow numbers from here on (OVS numbers other ports from 1).
PLANNED_OFPORT_BASE = 1000
PLANNED_OFPORT_SPAN = 30000


class Tunnels:
    """Peer bookkeeping of one agent; ``peers`` is the node IP -> Peer map the pipeline uses."""

    def __init__(self, ops, node_ip: str, static: Iterable[str], dynamic: bool):
        self.ops = ops
        self.node_ip = node_ip
        self.static = set(static)
        self.dynamic = dynamic
        self.peers: dict[str, Peer] = {}
        self.refs: dict[str, set[str]] = {}  # node IP -> services with an instance there
        self.learned: dict[str, float] = {}  # node IP -> when it was learned
        self._down_since: dict[str, float] = {}  # learned peers whose BFD is down
        self._hold: dict[str, float] = {}  # node IP -> until when it is not learned

    def start(self, table: Mapping[str, Service], learned: Iterable[str] = ()) -> dict[str, Peer]:
        """Make the tunnels the start table (and the last run's learned peers) need; remove
        ports of nodes none of them has any more."""
        self.refs = peer_refs(table, self.node_ip) if self.dynamic else {}
        now = time.monotonic()
        self.learned = {ip: now for ip in learned} if self.dynamic else {}
        self.peers = {}
        for ip in sorted(self.static | set(self.refs) | set(self.learned)):
            try:
                self.peers[ip] = Peer(ip, self.ops.ensure_tunnel(ip))
            except Exception as exc:  # noqa: BLE001 - one peer's tunnel must not stop the others
                LOG.error("tunnel to %s not made: %s: %s", ip, type(exc).__name__, exc)
        if self.dynamic:
            for ip in self.ops.tunnel_peers():
                if ip not in self.peers:
                    LOG.info("tunnel to %s: no service there any more; removed", ip)
                    self.ops.remove_tunnel(ip)
        return self.peers

    def prepare(self, services: Iterable[Service]) -> dict[str, Peer]:
        """Planned peers for node IPs of ``services`` that have no tunnel yet (cluster mode)."""
        if not self.dynamic:
            return {}
        wanted = set(peer_refs({s.name: s for s in services}, self.node_ip))
        return self._plan(sorted(wanted - set(self.peers)))

    def follow(
        self,
        planned: dict[str, Peer],
        old: Mapping[str, Service | None],
        table: Mapping[str, Service],
    ) -> tuple[list[str], list[str]]:
        """Book the services of ``old`` as they are now in ``table``: (added, removed) peers."""
        if not self.dynamic:
            return [], []
        for name, svc in old.items():
            for ip in node_ips(svc, self.node_ip):
                self.refs.get(ip, set()).discard(name)
            for ip in node_ips(table.get(name), self.node_ip):
                self.refs.setdefault(ip, set()).add(name)
        self.refs = {ip: names for ip, names in self.refs.items() if names}
        wanted = self.static | set(self.refs) | set(self.learned)
        added = sorted(ip for ip in planned if ip in wanted)
        for ip in added:
            self.peers[ip] = planned[ip]
        removed = sorted(ip for ip in self.peers if ip not in wanted)
        hold = time.monotonic() + HOLD_S
        for ip in removed:
            del self.peers[ip]
            self._hold[ip] = hold
        return added, removed

    def learn(self, ip: str) -> dict[str, Peer]:
        """A planned tunnel back to a node whose BFD reached the any-peer port ({} if not)."""
        now = time.monotonic()
        self._hold = {p: t for p, t in self._hold.items() if t > now}
        if not self.dynamic or ip in self.peers or ip == self.node_ip or ip in self._hold:
            return {}
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            return {}
        planned = self._plan([ip])
        self.peers.update(planned)
        self.learned[ip] = now
        LOG.info("node %s runs a tunnel to this node: making one back", ip)
        return planned

    def create(self, planned: Mapping[str, Peer]) -> tuple[list[str], dict[str, Peer]]:
        """Make planned ports whose flows are in place: (failed, renumbered) peers.

        A failed peer is dropped from ``peers``; a port OVS numbered otherwise than planned
        is booked with its real number (its flows must follow).
        """
        failed, renumbered = [], {}
        for ip, peer in sorted(planned.items()):
            try:
                ofport = self.ops.ensure_tunnel(ip, ofport=peer.ofport)
            except Exception as exc:  # noqa: BLE001 - one peer's tunnel must not stop the others
                LOG.error("tunnel to %s not made: %s: %s", ip, type(exc).__name__, exc)
                failed.append(ip)
                self.peers.pop(ip, None)
                self.learned.pop(ip, None)
                continue
            if ofport != peer.ofport:
                LOG.warning("tunnel to %s got ofport %d, not %d", ip, ofport, peer.ofport)
                renumbered[ip] = self.peers[ip] = Peer(ip, ofport)
        made = [ip for ip in planned if ip not in failed]
        if made:
            # The other end learns this node's MAC from the announcement (it may have to answer
            # through its any-peer port); this node learns theirs from the warm-up.
            self.ops.announce()
            unknown = self.ops.warm_neighbors(made)
            if unknown:
                LOG.warning(
                    "underlay MAC of %s not learned yet: first packets may be lost", unknown
                )
        return failed, renumbered

    def stale_learned(self, bfd: Callable[[str], dict]) -> list[str]:
        """Learned peers no service needs whose BFD stayed down: removed from ``peers``."""
        now = time.monotonic()
        out = []
        for ip, since in list(self.learned.items()):
            if ip in self.refs or ip in self.static or now - since < LEARN_GRACE_S:
                self._down_since.pop(ip, None)
                continue
            if bfd(ip).get("forwarding"):
                self._down_since.pop(ip, None)
                continue
            if now - self._down_since.setdefault(ip, now) >= LEARNED_DOWN_S:
                out.append(ip)
        for ip in out:
            del self.learned[ip]
            self._down_since.pop(ip, None)
            self.peers.pop(ip, None)
            LOG.info("node %s no longer runs a tunnel to this node: tunnel removed", ip)
        return out

    def drop(self, removed: list[str]) -> None:
        """Remove the ports of ``removed`` peers (before their flows: see the module doc)."""
        for ip in removed:
            try:
                self.ops.remove_tunnel(ip)
            except Exception as exc:  # noqa: BLE001 - a port left over is harmless
                LOG.warning("tunnel to %s not removed: %s: %s", ip, type(exc).__name__, exc)

    def _plan(self, ips: list[str]) -> dict[str, Peer]:
        """Peers for ``ips`` with the OpenFlow number each port will get (not made yet)."""
        if not ips:
            return {}
        ports = self.ops.tunnel_ofports()
        used = set(ports.values()) | {p.ofport for p in self.peers.values()}
        planned = {}
        for ip in ips:
            ofport = ports.get(ip)  # a port left by an earlier run keeps its number
            if ofport is None:
                ofport = _free_ofport(ip, used)
            used.add(ofport)
            planned[ip] = Peer(ip, ofport)
        return planned


def _free_ofport(ip: str, used: set[int]) -> int:
    """A port number of the planned range, derived from ``ip``, not in ``used``."""
    start = int(ipaddress.IPv4Address(ip)) % PLANNED_OFPORT_SPAN
    for step in range(PLANNED_OFPORT_SPAN):
        ofport = PLANNED_OFPORT_BASE + (start + step) % PLANNED_OFPORT_SPAN
        if ofport not in used:
            return ofport
    raise RuntimeError("no free OpenFlow port number for a tunnel")


def node_ips(svc: Service | None, own: str) -> set[str]:
    """The other nodes' IPv4 addresses that ``svc`` places instances on."""
    out: set[str] = set()
    for inst in svc.instances if svc is not None else ():
        if not inst.node_ip or inst.node_ip == own:
            continue
        try:
            ipaddress.IPv4Address(inst.node_ip)
        except ValueError:
            LOG.warning(
                "%s instance %d: node IP %s is not IPv4; no tunnel",
                svc.name,
                inst.number,
                inst.node_ip,
            )
            continue
        out.add(inst.node_ip)
    return out


def peer_refs(table: Mapping[str, Service], own: str) -> dict[str, set[str]]:
    """Node IP -> the services of ``table`` with an instance there."""
    refs: dict[str, set[str]] = {}
    for name, svc in table.items():
        for ip in node_ips(svc, own):
            refs.setdefault(ip, set()).add(name)
    return refs
