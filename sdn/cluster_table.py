"""Cluster mode's table changes: feed changes, resyncs and query answers applied to the agent.

A part of ``sdn.cluster.ClusterSync`` (a mixin on its state). Every change is decided and
applied under one lock, in order, so an older answer never overwrites a newer one: each
service remembers the feed revision its content is from.
"""

from __future__ import annotations

import dataclasses
import logging

from oaknet.model import ModelError, Service
from sdn.clusterlink import ClientError, Unavailable

LOG = logging.getLogger(__name__)


class ClusterTable:
    """Table operations of ``sdn.cluster.ClusterSync``."""

    def _learn(self, svc: Service, revision: int, wait: bool) -> None:
        """Apply a query answer (at least as new as ``revision``) unless the feed was newer."""
        svc = placed_only(svc)
        with self._apply:
            with self._lock:
                self._dropping.pop(svc.name, None)
            self.outbox.cancel("forget", job_body(svc.name))
            with self._lock:
                newer = revision < self.revs.get(svc.name, -1)
                if not newer:
                    self.revs[svc.name] = revision
            if not newer:
                self._put_and_book({svc.name: svc}, [], wait)  # waits for the switch
            elif wait:
                # The feed brought the service first and its flows may still be queued for
                # the switch: a re-injected packet must find them.
                self.agent.settled()

    def _apply_answer(self, answer: dict, generation: int) -> None:
        """Apply one watch answer (changes or a resync) and move the revision on."""
        with self._apply:
            if answer.get("resync"):
                self._resync(answer)
            else:
                puts, gone = self._changes(answer.get("changes") or [])
                if puts or gone:
                    self._put_and_book(puts, gone, wait=False)
            with self._lock:
                revision = int(answer["revision"])
                moved = revision != self.state.revision
                self.state.revision = revision
                # Removals acknowledged before this poll started cannot be undone by it.
                for name, acked in list(self._dropping.items()):
                    if acked is not None and acked < generation:
                        del self._dropping[name]
            if moved:
                self._dirty.set()

    def _changes(self, changes: list[dict]) -> tuple[dict[str, Service], list[str]]:
        puts: dict[str, Service] = {}
        gone: list[str] = []
        with self._lock:
            for change in changes:
                name, revision = str(change.get("subject")), int(change["revision"])
                if name in self._dropping or revision <= self.revs.get(name, -1):
                    continue
                self.revs[name] = revision
                self.changes_applied += 1
                if change["op"] == "delete":
                    puts.pop(name, None)
                    gone.append(name)
                else:
                    try:
                        puts[name] = placed_only(Service.from_dict(change["doc"]["service"]))
                    except (ModelError, KeyError, TypeError) as exc:
                        LOG.error("change %d of %s not applied: %s", revision, name, exc)
                        continue
                    if name in gone:
                        gone.remove(name)
        return puts, gone

    def _resync(self, answer: dict) -> None:
        revision = int(answer["revision"])
        table = {}
        for doc in answer.get("services") or []:
            svc = placed_only(Service.from_dict(doc["service"]))
            table[svc.name] = svc
        with self._lock:
            self.resyncs += 1
            for name in self._dropping:
                table.pop(name, None)
            self.revs = {name: revision for name in table}
        # The services of local containers stay even when the cluster forgot this node's
        # interest (its store was replaced); they are asked for again below.
        local = {c.service for c in self.agent.list_containers()}
        missing = sorted(n for n in local - set(table) if n in self.agent.file_table)
        for name in missing:
            table[name] = self.agent.file_table[name]
        gone = [n for n in self.agent.file_table if n not in table]
        LOG.info("resync from the cluster at revision %d: %d services", revision, len(table))
        self._put_and_book(table, gone, wait=False, replace=True)
        for name in missing:
            try:
                svc, rev = self._query(self.link.query_name, name)
            except (ClientError, Unavailable) as exc:
                LOG.warning("service %s of a local container not re-registered: %s", name, exc)
                continue
            with self._lock:
                self.revs[name] = max(rev, self.revs.get(name, -1))
            self._put_and_book({name: svc}, [], wait=False)

    def _put_and_book(
        self, puts: dict[str, Service], gone: list[str], wait: bool, replace: bool = False
    ) -> None:
        """Hand the change to the agent and keep the saved table and address index in step."""
        old = {n: self.agent.file_table.get(n) for n in [*puts, *gone]}
        if replace:
            self.agent.set_table(puts, wait=wait)
        else:
            self.agent.update_services(puts, gone, wait=wait)
        with self._lock:
            for name in gone:
                self._reindex(old.get(name), None)
                self.state.services.pop(name, None)
            for name, svc in puts.items():
                self._reindex(old.get(name), svc)
                self.state.services[name] = svc.to_dict()
        self._dirty.set()

    def _reindex(self, old: Service | None, new: Service | None) -> None:
        for svc, add in ((old, False), (new, True)):
            if svc is None:
                continue
            addrs = [a for s in svc.service_ips for a in (s.ipv4, s.ipv6) if a]
            addrs += [a for i in svc.instances for a in (i.instance_ip, i.instance_ip_v6) if a]
            for addr in addrs:
                if add:
                    self._index[addr] = svc.name
                elif self._index.get(addr) == svc.name:
                    del self._index[addr]


def placed_only(svc: Service) -> Service:
    """``svc`` with the node of every instance that runs nowhere now (scheduled, or stopped
    by its node) cleared: traffic only goes to instances whose node reported them running."""
    instances = [
        i if i.namespace_ip or i.namespace_ip_v6 else dataclasses.replace(i, node_ip=None)
        for i in svc.instances
    ]
    return dataclasses.replace(svc, instances=instances)


def job_body(name: str) -> dict:
    """The body of a report about job ``name`` (an interest removal)."""
    return {"job_name": name}
