"""The demo's scenario: build the hierarchy, deploy, measure each policy, move an instance."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import testbed as tb_lib

from demo import report
from demo import topology as topo
from demo.hierarchy import Hierarchy
from demo.orchestrator import Orchestrator
from demo.report import Progress
from demo.traffic import (
    BackgroundProbe,
    Distribution,
    FirstContact,
    MoveResult,
    distribution,
    first_contact,
)

LOG = logging.getLogger(__name__)

PROBE_GAP_S = 0.05
MOVE_TIMEOUT_S = 15.0


@dataclass
class DemoResult:
    """What the demo measured, for its tables and for the end-to-end test."""

    prefix: str
    service_ips: dict[str, dict[str, str]] = field(default_factory=dict)
    first_contacts: list[FirstContact] = field(default_factory=list)
    distributions: list[Distribution] = field(default_factory=list)
    move: MoveResult | None = None
    pids: list[int] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds since start


class Demo:
    """Runs the scenario on an entered testbed; ``run()`` returns what it measured."""

    def __init__(self, tb: tb_lib.Testbed, progress: Progress, requests: int = 40):
        self.tb = tb
        self.progress = progress
        self.requests = requests
        self.h = Hierarchy(tb)
        self.orch = Orchestrator(self.h)
        self.result = DemoResult(prefix=tb.prefix)

    def close(self) -> None:
        """Close the demo's own API clients (the testbed stops processes and namespaces)."""
        self.h.close()

    def run(self) -> DemoResult:
        """Every step of the scenario, in order."""
        self.build()
        self.deploy()
        self.measure()
        self.move_instance()
        return self.result

    # -- steps -----------------------------------------------------------------------------

    def _step(self, key: str, message: str) -> None:
        self.result.steps[key] = self.progress.elapsed()
        self.progress.step(message)

    def build(self) -> None:
        """Namespaces, OVS, managers and agents."""
        self._step(
            "network",
            "underlay 192.0.2.0/24 + 2001:db8::/64: hosts for the root and "
            "2 cluster managers, 4 workers with their own OVS",
        )
        self.h.build_network()
        self.result.pids = self.h.pids()
        self._step(
            "delays",
            f"delays between workers: {topo.DELAY_SAME_CLUSTER_MS:g} ms one way "
            f"inside a cluster, {topo.DELAY_OTHER_CLUSTER_MS:g} ms between the clusters",
        )
        self._step(
            "managers",
            f"root manager on {topo.ROOT.ip4}:{topo.ROOT_PORT}, cluster "
            + ", ".join(f"{c.cluster_id} on {c.manager.ip4}" for c in topo.CLUSTERS)
            + " (tokens generated for this run)",
        )
        self.h.start_managers()
        self.result.pids = self.h.pids()
        self._step("agents", "node agents on w1..w4 register with their cluster managers")
        self.h.start_agents()
        self.result.pids = self.h.pids()
        for cluster_id, api in self.h.cluster_apis.items():
            for node in sorted(api.get("/api/net/nodes"), key=lambda n: n["node_id"]):
                self.progress.step(
                    f"  {node['node_id']} ({cluster_id}, {node['host_ip']}): subnets "
                    f"{node['subnet_addr']}/{node['subnet_prefix']} "
                    f"{node['subnet_addr_v6']}/{node['subnet_prefix_v6']}"
                )

    def deploy(self) -> None:
        """Services at the root, instances scheduled on nodes and started in containers."""
        for plan in topo.SERVICES:
            doc = self.orch.deploy_service(plan)
            ips = {
                e["IpType"]: f"{e['Address']} {e['Address_v6']}" for e in doc["service_ip_list"]
            }
            self.result.service_ips[plan.key] = ips
            self._step(
                f"service-{plan.key}",
                f"service {plan.job_name}: round-robin "
                f"{ips.get('RR')}, closest {ips.get('Closest')}",
            )
        for plan in topo.SERVICES:
            placed = self.orch.deploy(plan)
            self.result.pids = self.h.pids()
            self._step(
                f"instances-{plan.key}",
                f"{plan.key}: " + ", ".join(f"{p.label} ({p.instance_ip})" for p in placed),
            )
        # Nodes make tunnels to the nodes in their table; BFD and the RTT probes need a moment
        # (closest orders instances by the measured RTT).
        self._step("tunnels", "tunnels up: BFD forwarding and RTT measured on every node")
        self.h.wait_peers()

    def measure(self) -> None:
        """First contacts, then each policy's distribution from the client containers."""
        o = self.orch
        web_rr, echo_rr = o.service_ip(topo.WEB, "RR"), o.service_ip(topo.ECHO, "RR")
        near = o.service_ip(topo.NEAR, "Closest")
        web_rr6 = o.service_ip(topo.WEB, "RR", v6=True)
        self._step("first", "first requests to services the clients' nodes never saw")
        for worker in topo.CLIENT_NODES:
            client = self._client(worker)
            for plan, address, port, proto in (
                (topo.WEB, web_rr, 80, "http"),
                (topo.ECHO, echo_rr, topo.ECHO.port, "udp"),
                (topo.NEAR, near, 80, "http"),
            ):
                if worker in plan.placement:
                    continue
                self.result.first_contacts.append(
                    first_contact(self.tb, client, f"cl@{worker}", plan.key, address, port, proto)
                )
        self.progress.line(report.first_contacts(self.result.first_contacts))
        self._step(
            "traffic",
            f"clients send {self.requests} requests per service IP "
            "(each on a new connection or socket)",
        )
        runs = [
            ("round-robin", topo.WEB, web_rr, 80, "http"),
            ("round-robin", topo.WEB, web_rr6, 80, "http"),
            ("round-robin", topo.ECHO, echo_rr, topo.ECHO.port, "udp"),
            ("closest", topo.NEAR, near, 80, "http"),
        ]
        for policy, plan, address, port, proto in runs:
            for worker in topo.CLIENT_NODES:
                if ":" in address and worker != topo.CLIENT_NODES[0]:
                    continue  # one IPv6 client is enough to show it
                self.result.distributions.append(
                    distribution(
                        self.tb,
                        self._client(worker),
                        f"cl@{worker}",
                        policy,
                        plan.key,
                        address,
                        port,
                        proto,
                        self.requests,
                    )
                )
        self.progress.line(report.distributions(self.result.distributions))

    def move_instance(self) -> None:
        """Move web's instance to another node while clients keep using web's service IP."""
        plan, number = topo.WEB, topo.MOVE_INSTANCE
        before = self.orch.placed[(plan.key, number)]
        after_label = topo.instance_label(plan, number, topo.MOVE_TO)
        move = MoveResult(before.label, after_label)
        self.result.move = move
        self._step(
            "move",
            f"moving {before.label} to {topo.MOVE_TO} (undeploy + deploy at "
            "the root, detach + attach at the nodes) while clients keep sending",
        )
        web_rr = self.orch.service_ip(plan, "RR")
        probes = []
        for worker in topo.CLIENT_NODES:
            client = self._client(worker)
            probes.append(
                BackgroundProbe(self.tb, client, f"cl@{worker}", "http", web_rr, 80, PROBE_GAP_S)
            )
            probes.append(
                BackgroundProbe(
                    self.tb,
                    client,
                    f"cl@{worker}",
                    "udp",
                    web_rr,
                    plan.udp_port,
                    PROBE_GAP_S,
                    before.label,
                )
            )
        time.sleep(0.5)
        start = time.monotonic()
        # The nodes' tables are watched while the orchestrator is still busy.
        tables = threading.Thread(target=self._wait_tables, args=(move, start), daemon=True)
        tables.start()
        try:
            after = self.orch.move(plan, number, topo.MOVE_TO)
            move.attached_ms = (after.attached_at - start) * 1000
            tables.join(MOVE_TIMEOUT_S)
            self._wait_settled(probes, move, start)
            time.sleep(1.0)  # traffic after the change: it must keep working
        finally:
            answers = {id(p): p.stop() for p in probes}
        self.result.pids = self.h.pids()
        for probe in probes:
            add = move.add_http if probe.kind == "http" else move.add_udp
            add(probe.client, answers[id(probe)], start)
        self.progress.line(report.move(move))

    # -- helpers ---------------------------------------------------------------------------

    def _client(self, worker: str) -> tb_lib.Container:
        return self.orch.placed[(topo.CLIENT.key, topo.client_instance(worker))].container

    def _wait_tables(self, move: MoveResult, start: float) -> None:
        """Poll each node's table until it places the instance on the new node (placed: with
        its namespace address, which the new node reports once it attached the container)."""
        node_ip = topo.WORKERS[topo.MOVE_TO].host.ip4
        waiting = set(self.h.nodes)
        deadline = start + MOVE_TIMEOUT_S
        while waiting and time.monotonic() < deadline:
            for name in sorted(waiting):
                svc = self.h.nodes[name].services().get(topo.WEB.job_name)
                if svc is None:
                    continue  # a node that never used web does not follow it
                inst = [i for i in svc["instances"] if i["number"] == topo.MOVE_INSTANCE]
                if inst and inst[0]["node_ip"] == node_ip and inst[0].get("namespace_ip"):
                    move.tables_ms[name] = (time.monotonic() - start) * 1000
                    waiting.discard(name)
            time.sleep(0.02)

    def _wait_settled(self, probes: list[BackgroundProbe], move: MoveResult, start: float) -> None:
        """Wait until every HTTP probe met the moved instance and every UDP socket is answered
        again by a live instance after the tables changed (or the time is up)."""
        deadline = start + MOVE_TIMEOUT_S
        changed = start + max(move.tables_ms.values(), default=0) / 1000

        def settled(probe: BackgroundProbe) -> bool:
            answers = [a for a in probe.answers() if a["t"] >= start]
            if probe.kind == "http":
                return any(a.get("name") == move.label_after for a in answers)
            socks = {a["sock"] for a in answers}
            return bool(socks) and all(
                any(
                    a["sock"] == s
                    and a["t"] >= changed
                    and a.get("name") not in (None, move.label_before)
                    for a in answers
                )
                for s in socks
            )

        waiting = list(probes)
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if not settled(p)]
            time.sleep(0.05)
        if waiting:
            LOG.warning(
                "move: %s did not settle within %.0f s",
                ", ".join(f"{p.client} {p.kind}" for p in waiting),
                MOVE_TIMEOUT_S,
            )
