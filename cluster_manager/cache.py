"""The cluster's cache of the root's service table, its nodes' interests and the node feed.

One entry per service some node (or the cluster orchestrator) needs. Entries follow the root:
every write carries the root revision its content is from, and a write based on an older
revision than the entry already holds is dropped, so an answer fetched from the root on the
side can never undo a newer change already applied from the root's feed.

Each change of what nodes see emits one change (kind ``service``, subject = job name,
doc ``{"service", "descriptor"}`` as the root's feed), which the node watch feed filters by
the node's interests.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

from oaknet.model import Service
from oaknet.store import DELETE, PUT, Reader, Store, Tx

LOG = logging.getLogger(__name__)

JOB = "job"  # key: job name
INTEREST = "interest"  # key: "<job name>|<node id>"; terms job=<name>, node=<id>
NODE = "node"  # key: node id (see nodes.py)
META = "meta"  # key "root": the root feed revision applied so far
OUTBOX = "outbox"  # key: job name whose interest removal the root has not heard yet
SERVICE = "service"  # the kind of the changes in the node feed
STOPPED = "stopped"  # status of an instance its node reported undeployed


@dataclass
class Entry:
    """A cached service: the root's record plus what the cluster keeps beside it."""

    name: str
    service: Service | None = None  # None: not (or no longer) known at the root
    descriptor: dict = field(default_factory=dict)
    root_revision: int = 0  # the root revision the content is from
    deployed: bool = False  # the cluster orchestrator announced it (POST /api/net/deployment)
    # instance number -> the placement its node reported undeployed (the root has no path
    # for that report, so the cluster hides the instance until the root shows a new one)
    stopped: dict[str, dict] = field(default_factory=dict)

    def to_doc(self) -> dict:
        """The stored document."""
        return {
            "name": self.name,
            "service": self.service.to_dict() if self.service else None,
            "descriptor": self.descriptor,
            "root_revision": self.root_revision,
            "deployed": self.deployed,
            "stopped": self.stopped,
        }

    @classmethod
    def from_doc(cls, doc: dict) -> Entry:
        """Read back ``to_doc`` output."""
        svc = doc.get("service")
        return cls(
            doc["name"],
            Service.from_dict(svc) if svc else None,
            doc.get("descriptor") or {},
            int(doc.get("root_revision", 0)),
            bool(doc.get("deployed")),
            dict(doc.get("stopped") or {}),
        )

    def view(self) -> Service | None:
        """The service as nodes see it: instances their node stopped are not placed."""
        if self.service is None:
            return None
        svc = copy.deepcopy(self.service)
        for inst in svc.instances:
            if _matches(self.stopped.get(str(inst.number)), inst):
                inst.status = STOPPED
                inst.namespace_ip = inst.namespace_ip_v6 = None
        return svc

    def visible(self) -> dict | None:
        """The document of the node feed, or None when nodes see no service."""
        svc = self.view()
        return None if svc is None else {"service": svc.to_dict(), "descriptor": self.descriptor}

    def terms(self) -> list[str]:
        """Index terms: the name, every service/instance IP, every node running an instance."""
        out = [f"name={self.name}"]
        if self.service is not None:
            for sip in self.service.service_ips:
                out += [f"ip={a}" for a in (sip.ipv4, sip.ipv6) if a]
            for inst in self.service.instances:
                out += [f"ip={a}" for a in (inst.instance_ip, inst.instance_ip_v6) if a]
                if inst.node_id:
                    out.append(f"node={inst.node_id}")
        return out


class Cache:
    """Store operations on entries, interests and the root position; one per process."""

    def __init__(self, store: Store, cluster_id: str):
        self.store = store
        self.cluster_id = cluster_id

    # -- reads -------------------------------------------------------------------------------

    def entry(self, name: str, reader: Reader | None = None) -> Entry | None:
        """The entry of job ``name``, or None."""
        doc = (reader or self.store).get(JOB, name)
        return Entry.from_doc(doc) if doc else None

    def by_ip(self, address: str) -> Entry | None:
        """The entry whose service owns a service IP or instance IP (indexed), or None."""
        found = self.store.find(JOB, f"ip={address}")
        return Entry.from_doc(found[0][1]) if found else None

    def entries(self) -> list[Entry]:
        """Every entry, by name."""
        return [Entry.from_doc(doc) for _, doc in self.store.items(JOB)]

    def position(self, reader: Reader | None = None) -> int:
        """The root feed revision applied so far (0 before the first change)."""
        doc = (reader or self.store).get(META, "root")
        return int(doc["revision"]) if doc else 0

    def interests_of(self, node_id: str, reader: Reader | None = None) -> set[str]:
        """The job names ``node_id`` is interested in."""
        found = (reader or self.store).find(INTEREST, f"node={node_id}")
        return {doc["job_name"] for _, doc in found}

    def interested_nodes(self, name: str, reader: Reader | None = None) -> set[str]:
        """The nodes interested in job ``name``."""
        return {doc["node_id"] for _, doc in (reader or self.store).find(INTEREST, f"job={name}")}

    def pending_removals(self) -> list[str]:
        """Jobs whose interest removal the root has not acknowledged yet."""
        return self.store.keys(OUTBOX)

    # -- writes from the root ----------------------------------------------------------------

    def open_entry(self, name: str) -> int:
        """Make sure job ``name`` has an entry (the root feed fills it); the root position.

        The position is read after the entry exists: a root change applied later reaches the
        entry, one applied before is at or below the position and so already in any answer
        the root gives after this call.
        """
        with self.store.transaction() as tx:
            if tx.get(JOB, name) is None:
                tx.put(
                    JOB,
                    name,
                    Entry(name, root_revision=self.position(tx)).to_doc(),
                    [f"name={name}"],
                )
            tx.delete(OUTBOX, name)
            return self.position(tx)

    def write(self, service: Service, descriptor: dict, based_on: int) -> Entry | None:
        """Store a service fetched from the root after position ``based_on`` was read.

        Returns the entry as stored: unchanged when it holds a newer revision already; None
        when the entry is gone (nobody needs the service any more).
        """
        with self.store.transaction() as tx:
            entry = self.entry(service.name, tx)
            if entry is None:
                return None
            if entry.root_revision > based_on:
                return entry
            before = entry.visible()
            entry.service, entry.descriptor = service, descriptor
            entry.root_revision = based_on
            self._save(tx, entry, before)
            return entry

    def apply_changes(self, changes: list[dict], revision: int) -> int:
        """Apply root feed changes to the entries they concern; how many changed an entry."""
        applied = 0
        with self.store.transaction() as tx:
            for change in changes:
                if change.get("kind") != SERVICE:
                    continue
                entry = self.entry(str(change.get("subject")), tx)
                if entry is None or change["revision"] <= entry.root_revision:
                    continue
                before = entry.visible()
                if change["op"] == DELETE:
                    entry.service = None
                else:
                    entry.service = Service.from_dict(change["doc"]["service"])
                    entry.descriptor = change["doc"].get("descriptor") or {}
                entry.root_revision = change["revision"]
                self._save(tx, entry, before)
                applied += 1
            # Only forward: a late answer of a stopped follower must not move it back.
            if revision > self.position(tx):
                self._set_position(tx, revision)
        return applied

    def apply_resync(self, docs: list[dict], revision: int) -> list[str]:
        """Replace the cached services by the root's full state; names the root did not send."""
        sent = {d["service"]["name"]: d for d in docs}
        missing = []
        with self.store.transaction() as tx:
            for _, doc in tx.items(JOB):
                entry = Entry.from_doc(doc)
                before = entry.visible()
                if entry.name in sent:
                    entry.service = Service.from_dict(sent[entry.name]["service"])
                    entry.descriptor = sent[entry.name].get("descriptor") or {}
                elif entry.service is not None:
                    entry.service = None
                    missing.append(entry.name)
                else:
                    # Unknown at the root or a query in flight: its answer still counts.
                    missing.append(entry.name)
                    if entry.root_revision > revision:  # the root's store was replaced
                        entry.root_revision = revision
                        self._save(tx, entry, before)
                    continue
                entry.root_revision = revision
                self._save(tx, entry, before)
            self._set_position(tx, revision)
        LOG.info("resynced %d services from the root at revision %d", len(sent), revision)
        return missing

    # -- interests, deployments and node reports ---------------------------------------------

    def add_interest(self, name: str, node_id: str) -> bool:
        """Register ``node_id``'s interest in job ``name``; True when it is new."""
        with self.store.transaction() as tx:
            created = tx.create(
                INTEREST,
                f"{name}|{node_id}",
                {"job_name": name, "node_id": node_id, "since": time.time()},
                [f"job={name}", f"node={node_id}"],
            )
        if created:
            LOG.debug("node %s is interested in %s", node_id, name)
        return created

    def remove_interest(self, name: str, node_id: str) -> bool:
        """Drop ``node_id``'s interest in job ``name``; True when it had one."""
        with self.store.transaction() as tx:
            return tx.delete(INTEREST, f"{name}|{node_id}")

    def set_deployed(self, name: str, deployed: bool) -> Entry | None:
        """Mark whether the cluster orchestrator runs job ``name`` here; the entry or None."""
        with self.store.transaction() as tx:
            entry = self.entry(name, tx)
            if entry is not None and entry.deployed != deployed:
                entry.deployed = deployed
                self._save(tx, entry, entry.visible())
            return entry

    def drop_if_unused(self, name: str) -> bool:
        """Delete the entry when no node needs it and it is not deployed; True when dropped.

        The root's interest removal is queued in the outbox in the same transaction.
        """
        with self.store.transaction() as tx:
            entry = self.entry(name, tx)
            if entry is None or entry.deployed or self.interested_nodes(name, tx):
                return False
            before = entry.visible()
            tx.delete(JOB, name)
            if before is not None:
                tx.emit(SERVICE, name, DELETE, name, before)
            tx.put(OUTBOX, name, {"job_name": name, "since": time.time()})
        LOG.info("service %s dropped from the cache: no node needs it", name)
        return True

    def discard(self, name: str) -> None:
        """Delete an entry nobody needs that never held a service (the root did not know it)."""
        with self.store.transaction() as tx:
            entry = self.entry(name, tx)
            if (
                entry is not None
                and entry.service is None
                and not entry.deployed
                and not self.interested_nodes(name, tx)
            ):
                tx.delete(JOB, name)

    def forget_removal(self, name: str) -> None:
        """The root acknowledged the interest removal of job ``name``."""
        with self.store.transaction() as tx:
            tx.delete(OUTBOX, name)

    def mark_stopped(self, entry: Entry, number: int, node_id: str) -> Entry:
        """Hide instance ``number`` from nodes until the root shows it placed anew."""
        with self.store.transaction() as tx:
            current = self.entry(entry.name, tx) or entry
            inst = current.service.instance(number) if current.service else None
            if inst is not None:
                before = current.visible()
                current.stopped[str(number)] = _placement(inst)
                self._save(tx, current, before)
            return current

    def clear_stopped(self, name: str, number: int) -> None:
        """Forget a stop report of instance ``number`` (its node reported it deployed)."""
        with self.store.transaction() as tx:
            entry = self.entry(name, tx)
            if entry is not None and str(number) in entry.stopped:
                before = entry.visible()
                del entry.stopped[str(number)]
                self._save(tx, entry, before)

    # -- helpers -----------------------------------------------------------------------------

    def _save(self, tx: Tx, entry: Entry, before: dict | None) -> None:
        if entry.service is None:
            entry.stopped = {}
        else:
            # A stop report only holds while the root still shows that very placement.
            entry.stopped = {
                n: p
                for n, p in entry.stopped.items()
                if _matches(p, entry.service.instance(int(n)))
            }
            self._own_interests(tx, entry)
        tx.put(JOB, entry.name, entry.to_doc(), entry.terms())
        after = entry.visible()
        if after is None and before is not None:
            tx.emit(SERVICE, entry.name, DELETE, entry.name, before)
        elif after is not None and after != before:
            tx.emit(SERVICE, entry.name, PUT, entry.name, after)

    def _own_interests(self, tx: Tx, entry: Entry) -> None:
        """A node is always interested in the services it runs an instance of."""
        for inst in entry.service.instances:
            if (
                inst.cluster_id == self.cluster_id
                and inst.node_id
                and tx.get(NODE, inst.node_id) is not None
            ):
                self.add_interest(entry.name, inst.node_id)

    def _set_position(self, tx: Tx, revision: int) -> None:
        if revision != self.position(tx):
            tx.put(META, "root", {"revision": revision})


def _placement(inst) -> dict:
    return {
        "node_id": inst.node_id,
        "namespace_ip": inst.namespace_ip,
        "namespace_ip_v6": inst.namespace_ip_v6,
    }


def _matches(placement: dict | None, inst) -> bool:
    return placement is not None and inst is not None and placement == _placement(inst)
