"""The agent's table, peer and cost changes: what each recomputes and hands to the switch.

A part of ``sdn.agent.Agent`` (a mixin on its state): every change takes the agent's mutation
lock, recomputes only the owners it touches under the state lock, and submits the delta.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from itertools import compress
from operator import is_not

from oaknet.model import CLOSEST, Service
from sdn.logic import Peer, peer_owner, port_owner
from sdn.spec import service_owner
from sdn.table import remote_addresses

LOG = logging.getLogger(__name__)


class TableOps:
    """Table, peer and cost operations of ``sdn.agent.Agent``."""

    def set_table(self, table: Mapping[str, Service], wait: bool = False) -> int:
        """Replace the service table; recompute only the services that changed.

        A service that is the same object as before is unchanged without comparing it: a
        table file re-read keeps those (``sdn.table.TableFile``). The identity checks run in
        C (map/compress), so one change in a table of 10k services costs well under 1 ms here.
        """
        with self._ops:
            with self._lock:
                known = self.file_table
                names = list(table)
                differ = compress(names, map(is_not, map(known.get, names), table.values()))
                puts = {n: table[n] for n in differ if known.get(n) != table[n]}
                new = sum(1 for n in puts if n not in known)
                gone: list[str] = []
                if len(known) + new != len(table):  # some known service is no longer there
                    gone = [n for n in known if n not in table]
            return self._update(puts, gone, wait)

    def update_services(
        self, puts: Mapping[str, Service], gone: Iterable[str] = (), wait: bool = False
    ) -> int:
        """Put and remove single services (one feed change): only they are recomputed.

        ``wait``: return once the switch applied the change (or after 10 s).
        """
        with self._ops:
            return self._update(dict(puts), list(gone), wait)

    def _update(self, puts: dict[str, Service], gone: list[str], wait: bool) -> int:
        """Apply table changes (the caller holds ``_ops``); how many services changed."""
        names = [*puts, *(n for n in gone if n not in puts)]
        planned = self.tunnels.prepare(puts.values())
        with self._lock:
            old = {n: self.table.get(n) for n in names}
            old_peers = dict(self.peers)
            for n in gone:
                self.file_table.pop(n, None)
                self.table.pop(n, None)
            for n, svc in puts.items():
                self.file_table[n] = svc
                self.table[n] = self._effective(svc)
            changed = [n for n in names if old[n] != self.table.get(n)]
            # A local container's instance IP may have changed: its port flows follow.
            units = [service_owner(n) for n in changed]
            units += [
                port_owner(c.port_name) for c in self.containers.values() if c.service in changed
            ]
            added, removed = self.tunnels.follow(planned, old, self.table)
            for ip in added:
                self.costs[ip] = float("inf")  # unmeasured until the RTT meter says otherwise
            for ip in removed:
                self.costs.pop(ip, None)
            units += [peer_owner(ip) for ip in (*added, *removed)]
            delta = self._recompute(units)
            before = remote_addresses({n: s for n, s in old.items() if s}, old_peers)
            now = {n: self.table[n] for n in names if n in self.table}
            after = remote_addresses(now, self.peers)
            lost = sorted(before - after)
        if changed:
            LOG.info("service table: %d services changed (%s)", len(changed), delta.summary())
        # A port goes before its flows, and a new one comes after them (see sdn.tunnels):
        # packets arriving on a port always find its flows, otherwise they take the any-peer
        # port.
        self.tunnels.drop(removed)
        self._submit(delta, wait=wait or bool(lost) or bool(removed) or bool(added))
        self._flush(lost)
        self._make_tunnels({ip: planned[ip] for ip in added})
        self._tunnels_done(added, removed)
        return len(changed)

    def learn_peer(self, node_ip: str) -> None:
        """A node without a tunnel here runs BFD towards this one: make a tunnel back."""
        with self._ops:
            planned = self.tunnels.learn(node_ip)
            if planned:
                self._peers_changed(sorted(planned), [])
                self._make_tunnels(planned)
                self._tunnels_done(sorted(planned), [])

    def prune_peers(self) -> None:
        """Remove learned peers whose BFD session stayed down (their tunnel here is gone)."""
        with self._ops:
            gone = self.tunnels.stale_learned(self.ops.bfd)
            if gone:
                self.tunnels.drop(gone)
                self._peers_changed([], gone)
                self._tunnels_done([], gone)

    def _peers_changed(self, added: list[str], removed: list[str]) -> None:
        """Install the flows of peers added to or removed from ``peers`` (holding ``_ops``)."""
        with self._lock:
            for ip in added:
                self.costs[ip] = float("inf")
            for ip in removed:
                self.costs.pop(ip, None)
            units = [peer_owner(ip) for ip in (*added, *removed)]
            # Services with instances there route into (or no longer into) the tunnel.
            units += [service_owner(n) for ip in (*added, *removed) for n in self._refs(ip)]
            delta = self._recompute(units)
        self._submit(delta, wait=True)

    def _make_tunnels(self, planned: dict[str, Peer]) -> None:
        """Make planned tunnel ports (flows are in place); repair what OVS did otherwise."""
        if not planned:
            return
        failed, renumbered = self.tunnels.create(planned)
        if failed or renumbered:
            # Limitation: a renumbered port gets its flows just after it exists, so a packet
            # in between is lost (only when OVS refused the planned number).
            self._peers_changed(sorted(renumbered), failed)

    def _refs(self, ip: str) -> list[str]:
        return sorted(self.tunnels.refs.get(ip, ()))

    def _tunnels_done(self, added: list[str], removed: list[str]) -> None:
        if added or removed:
            LOG.info("tunnels: %s added, %s removed", added or "none", removed or "none")
            if self.on_peers is not None:
                self.on_peers(sorted(self.peers))

    def set_costs(self, costs: dict[str, float]) -> None:
        """New RTT costs per peer: re-order the closest groups that have remote instances."""
        with self._ops:
            with self._lock:
                self.costs = {ip: costs.get(ip, float("inf")) for ip in self.peers}
                units = [
                    service_owner(name)
                    for name, svc in self.table.items()
                    if svc.service_ip(CLOSEST) is not None
                    and any(i.node_ip in self.peers for i in svc.instances)
                ]
                delta = self._recompute(units)
                self._save(list(self.containers.values()))
            if delta:
                LOG.info(
                    "peer costs changed (%s): %s",
                    ", ".join(f"{ip}={c:.2f}ms" for ip, c in sorted(costs.items())),
                    delta.summary(),
                )
            self._submit(delta)
