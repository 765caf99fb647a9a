"""Cluster mode: the node's table follows its cluster manager, and the node reports back.

- The follower long-polls the node feed from the last revision (kept in the state dir with the
  table, so a restarted agent resumes without a flush); each change is a per-service update,
  a resync answer replaces the table (the agent diffs it).
- Reports (instance deployed/undeployed, interest removal) go through an ordered outbox, also
  kept on disk, so a cluster that is down gets them when it is back.
- Table queries (attach of an unknown service, an unknown address punted by the pipeline)
  register the node's interest; services without a local instance whose flows see no packet
  for ``interest_idle_s`` are dropped and the cluster is told.
Cluster I/O runs on these threads only, never on the OpenFlow event thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from oaknet.model import Service
from sdn.cluster_table import ClusterTable, job_body
from sdn.clusterlink import (
    ClientError,
    ClusterLink,
    ClusterState,
    Unavailable,
    save_cluster_state,
)
from sdn.config import AgentConfig
from sdn.expiry import IdleWatch
from sdn.local import Container, LocalError
from sdn.outbox import MAX_BACKOFF_FACTOR, Outbox, Report
from sdn.peering import Peering
from sdn.resolver import Resolver

LOG = logging.getLogger(__name__)

# How long an attach waits for the cluster to learn an instance the root has just placed.
LEARN_INSTANCE_S = 3.0
LEARN_POLL_S = 0.02  # a query the cluster answers from its cache: cheap


class ClusterSync(ClusterTable):
    """One agent's cluster mode (implements ``sdn.agent.ClusterHooks``)."""

    def __init__(
        self, cfg: AgentConfig, link: ClusterLink, state: ClusterState, registered: bool = False
    ):
        self.cfg = cfg
        self.agent = None  # sdn.agent.Agent, set by attach()
        self.switch = None  # sdn.switch.Switch: flow statistics, packet re-injection
        self.resolver: Resolver | None = None
        self.link = link
        self.state = state
        self.registered = registered
        self.connected = registered  # the last call to the cluster was answered
        self.last_error: str | None = None
        self.queries = 0  # table queries sent to the cluster
        self.changes_applied = 0
        self.resyncs = 0
        self.expired = 0
        self.revs: dict[str, int] = {name: state.revision for name in state.services}
        self._index: dict[str, str] = {}  # service IP / instance IP -> service name
        for svc in state.table().values():
            self._reindex(None, svc)
        self._dropping: dict[str, int | None] = {}  # name -> watch generation of the ack
        self._watch_gen = 0
        self._lock = threading.Lock()  # guards the state above
        self._apply = threading.Lock()  # one table change at a time, in decision order
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self.outbox = Outbox(
            state.outbox, self._send, self._failed, self._dirty.set, cfg.cluster_retry_s
        )
        self.idle = IdleWatch(cfg.interest_idle_s, self._expirable, self._expire)
        self._threads: list[threading.Thread] = []
        self.peering: Peering | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def attach(self, agent, switch) -> None:
        """Wire cluster mode into the agent (attach/detach hooks) and the switch (punts)."""
        self.agent, self.switch, self.idle.switch = agent, switch, switch
        agent.cluster = self
        self.resolver = Resolver(
            self.resolve_address, switch.reinject, switch.reject, self.cfg.negative_cache_s
        )
        switch.resolver = self.resolver
        self.peering = Peering(agent, self._dirty.set)
        switch.peer_seen = self.peering.seen

    def start(self) -> None:
        """Start the follower, reporter, expiry and saver threads."""
        self.outbox.start()
        self.idle.start()
        if self.peering is not None:
            self.peering.start()
        for target, name in (
            (self._follow, "cluster-follow"),
            (self._save_loop, "cluster-save"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the threads (a long poll in flight is abandoned) and save the state."""
        self._stop.set()
        if self.peering is not None:
            self.peering.stop()
        self.outbox.stop()
        self.idle.stop()
        if self.resolver is not None:
            self.resolver.close()
        self._save()

    def status(self) -> dict:
        """Cluster facts for the health endpoint."""
        with self._lock:
            return {
                "url": self.cfg.cluster_url,
                "node_id": self.cfg.node_id,
                "registered": self.registered,
                "connected": self.connected,
                "revision": self.state.revision,
                "services": len(self.state.services),
                "pending_reports": len(self.outbox),
                "queries": self.queries,
                "changes_applied": self.changes_applied,
                "resyncs": self.resyncs,
                "expired_interests": self.expired,
                "last_error": self.last_error,
                "resolver": self.resolver.status() if self.resolver else None,
            }

    # -- hooks of the agent (node API threads) -----------------------------------------------

    def learn_service(self, service: str, instance: int) -> None:
        """Make sure ``service`` (with ``instance``) is in the table before an attach."""
        own = self.cfg.node_ip

        def placed_here(svc) -> bool:
            inst = svc.instance(instance) if svc is not None else None
            return inst is not None and inst.node_ip in (None, own)

        known = self.agent.file_table.get(service)
        if placed_here(known):
            return
        # The cluster learns an instance (or its move here) from the root's feed; a runtime
        # that attaches right after the orchestrator placed it can be a few rounds ahead.
        deadline = time.monotonic() + LEARN_INSTANCE_S
        try:
            svc, revision = self._query(self.link.query_name, service)
            while not placed_here(svc) and time.monotonic() < deadline:
                time.sleep(LEARN_POLL_S)
                svc, revision = self._query(self.link.query_name, service)
        except ClientError as exc:
            if known is not None:
                return  # the attach check names the missing instance
            if self._forgotten(exc):
                raise LocalError(503, "cluster_unavailable", "serviceName", exc.detail) from None
            if exc.status == 404:
                raise LocalError(404, "unknown_service", "serviceName", exc.detail) from None
            raise LocalError(502, "cluster_refused", "serviceName", str(exc)) from None
        except Unavailable as exc:
            if known is not None:
                return
            raise LocalError(503, "cluster_unavailable", "serviceName", str(exc)) from None
        self._learn(svc, revision, wait=False)

    def report_deployed(self, c: Container) -> None:
        """Tell the cluster an instance runs here (waits for the first attempt)."""
        body = {
            "job_name": c.service,
            "instance_number": c.instance,
            "nsip": c.namespace_ip,
            "nsipv6": c.namespace_ip_v6,
            "host_ip": self.cfg.node_ip,
            "host_port": self.cfg.reported_host_port,
        }
        self._report(Report("deployed", body))

    def report_undeployed(self, c: Container) -> None:
        """Tell the cluster an instance no longer runs here (waits for the first attempt)."""
        body = {"job_name": c.service, "instance_number": c.instance}
        self._report(Report("undeployed", body))

    def _report(self, report: Report) -> None:
        # In the usual case the cluster knows when the node API answers; a report the cluster
        # cannot take now stays in the outbox and the answer does not wait for it.
        queued = len(self.outbox)
        self.outbox.put(report)
        if self.connected and not queued:
            report.tried.wait(self.cfg.cluster_timeout_s + 1)

    # -- on-demand resolution (resolver threads) ---------------------------------------------

    def resolve_address(self, address: str) -> bool:
        """Ask the cluster who owns ``address`` and install it; True when it is known now."""
        with self._lock:
            if address in self._index:
                return True  # learned meanwhile: the flows are there or on their way
        try:
            svc, revision = self._query(self.link.query_ip, address)
        except ClientError as exc:
            self._forgotten(exc)
            level = logging.INFO if exc.status == 404 else logging.WARNING
            LOG.log(level, "address %s not resolved: %s %s", address, exc.status, exc.detail)
            return False
        except Unavailable as exc:
            LOG.warning("address %s not resolved: cluster unavailable: %s", address, exc)
            return False
        LOG.info("address %s resolved to %s", address, svc.name)
        self._learn(svc, revision, wait=True)
        return True

    def _query(self, call: Callable[[str], tuple[Service, int]], key: str):
        with self._lock:
            self.queries += 1
        return call(key)

    # -- follower ------------------------------------------------------------------------

    def _follow(self) -> None:
        backoff = self.cfg.cluster_retry_s
        while not self._stop.is_set():
            try:
                if not self.registered:
                    self._register()
                with self._lock:
                    self._watch_gen += 1
                    generation = self._watch_gen
                    since = self.state.revision
                answer = self.link.watch(since, self.cfg.watch_timeout_s)
            except (ClientError, Unavailable) as exc:
                self._failed("watch", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.cluster_retry_s * MAX_BACKOFF_FACTOR)
                continue
            if not self.connected:
                LOG.info("following the cluster's feed from revision %d", since)
            self.connected, self.last_error = True, None
            backoff = self.cfg.cluster_retry_s
            try:
                if answer.get("resync") and int(answer["revision"]) < since:
                    # The cluster's store is younger than this node's position: it may have
                    # forgotten the node too. Register before asking for anything.
                    LOG.warning("the cluster's feed went back to revision %s", answer["revision"])
                    self._register()
                self._apply_answer(answer, generation)
            except (ClientError, Unavailable) as exc:
                self._failed("registration", exc)
                self._stop.wait(backoff)
            except (KeyError, TypeError, ValueError) as exc:
                LOG.error("watch answer not applied: %s: %s", type(exc).__name__, exc)
                self._stop.wait(backoff)

    def _register(self) -> None:
        doc = self.link.register()
        got = (doc.get("subnet_addr"), doc.get("subnet_addr_v6"))
        have = (_addr(self.cfg.subnet_v4), _addr(self.cfg.subnet_v6))
        if got != have:
            # Limitation: the containers keep the addresses of the subnets the agent started
            # with; a node the cluster forgot entirely needs a restart with an empty state dir.
            LOG.error("the cluster now gives subnets %s, this agent runs %s", got, have)
        self.registered = self.connected = True
        LOG.info("registered with the cluster as %s", self.cfg.node_id)

    def _forgotten(self, exc: ClientError) -> bool:
        """Whether the cluster answered that it does not know this node (then register)."""
        if exc.status == 404 and exc.field == "node_id":
            self.registered = False  # the follower registers again before its next poll
            return True
        return False

    def _failed(self, what: str, exc: Exception) -> None:
        text = f"{what}: {exc}"
        if isinstance(exc, ClientError):
            self._forgotten(exc)
        if self.connected or self.last_error != text:
            LOG.warning("cluster %s failed: %s", what, exc)
        self.connected, self.last_error = False, text

    # -- reporter ------------------------------------------------------------------------

    def _send(self, report: Report) -> None:
        body = report.body
        if report.op == "deployed":
            self.link.deployed(body)
        elif report.op == "undeployed":
            self.link.undeployed(body["job_name"], body["instance_number"])
        elif report.op == "forget":
            self._forget(body["job_name"])
        else:
            LOG.error("unknown report %s dropped", report.op)

    def _forget(self, name: str) -> None:
        self.link.remove_interest(name)
        with self._lock:
            again = name not in self._dropping  # learned again while the removal was queued
            if not again:
                self._dropping[name] = self._watch_gen
        if again:
            # The removal may have overtaken the new interest: register it once more.
            try:
                svc, revision = self._query(self.link.query_name, name)
            except (ClientError, Unavailable) as exc:
                LOG.warning("interest in %s not registered again: %s", name, exc)
                return
            self._learn(svc, revision, wait=False)
        else:
            LOG.info("cluster told: %s is no longer needed here", name)

    # -- interest expiry (IdleWatch thread) ----------------------------------------------

    def _expirable(self) -> list[str]:
        """Services without a local instance that are not being dropped already."""
        local = self.agent.local_services()
        with self._lock:
            return [n for n in self.state.services if n not in local and n not in self._dropping]

    def _expire(self, name: str) -> None:
        with self._apply:
            with self._lock:
                if name in self._dropping or name not in self.state.services:
                    return
                self._dropping[name] = None
                self.expired += 1
            LOG.info("%s saw no traffic for %.0f s: dropped", name, self.cfg.interest_idle_s)
            self._put_and_book({}, [name], wait=False)
            with self._lock:
                self.revs.pop(name, None)
        self.outbox.put(Report("forget", job_body(name)))

    # -- persistence ---------------------------------------------------------------------

    def _save_loop(self) -> None:
        while not self._stop.is_set():
            if self._dirty.wait(1.0):
                self._dirty.clear()
                self._save()
                self._stop.wait(0.2)  # at most a few writes per second

    def _save(self) -> None:
        with self._lock:
            self.state.outbox = self.outbox.saved()
            if self.agent is not None:
                self.state.learned_peers = sorted(self.agent.tunnels.learned)
            snapshot = ClusterState(
                **{**self.state.__dict__, "services": dict(self.state.services)}
            )
        try:
            save_cluster_state(self.cfg.state_dir, snapshot)
        except OSError as exc:
            LOG.error("cluster state not saved: %s", exc)


def _addr(subnet: str | None) -> str | None:
    return subnet.split("/")[0] if subnet else None
