"""The data-plane measurements: each path in turn, same run, alternating; raw samples out."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable

import testbed as tb_lib
from demo import topology as topo
from demo.apis import ManagerApi, NetnsThread
from demo.orchestrator import Placed

from bench import dp_setup as setup
from bench.dp_ofgroups import GroupReader
from bench.dp_setup import CONVERGE, MOVING_NUMBER, Bed
from oaknet.oakestra import encode_path_name
from sdn.pipeline import GROUP_V4_MASK

LOG = logging.getLogger(__name__)

POLL_GAP_S = 0.002  # between two reads of one node's group while a change converges
CONVERGE_TIMEOUT_S = 10.0
SETTLE_S = 0.3  # quiet time between two measured changes
ATTACH_RETRY_S = 0.005
UDP_TIMEOUT_S = 0.3  # a datagram without an answer by then counts as lost


def rotated(items: list, turn: int) -> list:
    """``items`` starting at position ``turn``: each path goes first equally often."""
    k = turn % len(items)
    return items[k:] + items[:k]


def throughput(bed: Bed, reps: int, seconds: float, say: Callable[[str], None]) -> dict:
    """iperf3 TCP bits/s per path, ``reps`` runs of each, alternating; the CPU time both
    nodes' ovs-vswitchd spent per gigabit (what the userspace datapath pays per path) and the
    datapath passes per packet, summed over both nodes (each conntrack step is one more)."""
    out: dict[str, list[float]] = {name: [] for name, _ in bed.paths.items()}
    cpu: dict[str, list[float]] = {name: [] for name in out}
    passes: dict[str, list[float]] = {name: [] for name in out}
    retrans: dict[str, list[float]] = {name: [] for name in out}
    pids = [
        bed.h.workers[n].ovs.pid("ovs-vswitchd") for n in (setup.CLIENT_NODE, setup.SERVER_NODE)
    ]
    nodes = [bed.h.workers[n].ovs for n in (setup.CLIENT_NODE, setup.SERVER_NODE)]
    for turn in range(reps):
        for name, address in rotated(bed.paths.items(), turn):
            for node in nodes:
                node.appctl("dpif-netdev/pmd-stats-clear")
            before = sum(cpu_seconds(p) for p in pids)
            result = _iperf3(bed, address, seconds, setup.IPERF_PORTS[name])
            used = sum(cpu_seconds(p) for p in pids) - before
            passes[name].append(
                sum(_passes(n.appctl("dpif-netdev/pmd-stats-show")) for n in nodes)
            )
            if result["error"]:
                raise RuntimeError(f"iperf3 over {name} ({address}): {result['error']}")
            out[name].append(result["bits_per_second"])
            retrans[name].append(float(result.get("retransmits") or 0))
            gbits = result["bytes"] * 8 / 1e9
            cpu[name].append(used * 1000 / gbits if gbits > 0 else math.nan)
        say(
            f"  throughput run {turn + 1}/{reps}: "
            + ", ".join(f"{n} {v[-1] / 1e9:.2f}" for n, v in out.items())
            + " Gbit/s"
        )
    return {"bps": out, "cpu_ms_per_gbit": cpu, "passes": passes, "retransmits": retrans}


def _passes(stats: str) -> float:
    """The datapath passes per packet (1 + recirculations) of a ``pmd-stats-show``."""
    found = re.search(r"avg\. datapath passes per packet: ([\d.]+)", stats)
    return float(found.group(1)) if found else math.nan


def _iperf3(bed: Bed, address: str, seconds: float, port: int) -> dict:
    """One iperf3 run; a run that hangs past its timeout counts as an error with 0 bytes."""
    try:
        return tb_lib.iperf3(bed.client.netns, address, seconds, port=port)
    except subprocess.TimeoutExpired:
        return {"error": "timed out", "bytes": 0, "sent_bytes": 0}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_rtt(bed: Bed, reps: int, count: int) -> dict[str, dict[str, list[float]]]:
    """UDP request/response round trips (ms) per path on one connected socket each, and how
    many datagrams got no answer within UDP_TIMEOUT_S."""
    out: dict[str, dict[str, list[float]]] = {
        name: {"ms": [], "lost": []} for name, _ in bed.paths.items()
    }
    for turn in range(reps):
        for name, address in rotated(bed.paths.items(), turn):
            result = bed.tool(
                bed.client,
                "udp-rtt",
                address,
                setup.UDP_PORT,
                count,
                0.002,
                UDP_TIMEOUT_S,
                timeout=count * (UDP_TIMEOUT_S + 0.01) + 60,
            )
            out[name]["ms"] += result["ms"]
            out[name]["lost"].append(result["lost"] / count)
    return out


def tcp_rr(bed: Bed, reps: int, count: int) -> dict[str, list[float]]:
    """New connection + request + answer latencies (ms) per path, one after another."""
    out: dict[str, list[float]] = {name: [] for name, _ in bed.paths.items()}
    for turn in range(reps):
        for name, address in rotated(bed.paths.items(), turn):
            port = setup.PATH_TCP_PORTS[name]
            out[name] += bed.tool(bed.client, "tcp-rr", address, port, count)["ms"]
    return out


def cps(bed: Bed, reps: int, seconds: float, parallel: int) -> dict[str, list[float]]:
    """Completed new connections per second per path with ``parallel`` in flight."""
    out: dict[str, list[float]] = {name: [] for name, _ in bed.paths.items()}
    for turn in range(reps):
        for name, address in rotated(bed.paths.items(), turn):
            port = setup.PATH_TCP_PORTS[name]
            result = bed.tool(bed.client, "cps", address, port, seconds, parallel)
            out[name].append(result["per_s"])
    return out


def first_contact(bed: Bed) -> list[dict]:
    """Per never-used service: ms to the first answer byte, again once known, and losses."""
    out = []
    for plan, address in bed.firsts:
        fresh = bed.tool(bed.client, "first", address, setup.TCP_PORT, 5)
        known = bed.tool(bed.client, "first", address, setup.TCP_PORT, 5)
        if not fresh["ok"] or not known["ok"]:
            raise RuntimeError(f"first contact with {plan.key} failed: {fresh} / {known}")
        out.append(
            {
                "service": plan.key,
                "first_ms": fresh["ms"],
                "known_ms": known["ms"],
                "lost": int(fresh["retrans"] > 0 or known["retrans"] > 0),
            }
        )
    return out


def resolution_queries(bed: Bed) -> dict[str, list[float]]:
    """The two table queries of an on-demand resolution, timed on their own: the node's query
    to its cluster manager (from the client node's namespace, with its token; the cluster
    answers from its cache now) and the same query at the root (from the root's host)."""
    node = setup.CLIENT_NODE
    cluster = topo.cluster_of(node)
    where = NetnsThread(bed.h.workers[node].netns)
    as_node = ManagerApi(where, cluster.url, bed.h.tokens.nodes[node], cluster.cluster_id)
    out: dict[str, list[float]] = {"cluster": [], "root": []}
    try:
        for _, address in bed.firsts:
            path = f"/service/ip/{encode_path_name(address)}/instances"
            for name, api, prefix in (
                ("cluster", as_node, "/api/net/node"),
                ("root", bed.h.root_api, "/api/net"),
            ):
                start = time.perf_counter()
                api.get(prefix + path)
                out[name].append((time.perf_counter() - start) * 1000)
    finally:
        as_node.close()
        where.close()
    return out


def converge(bed: Bed, changes: int, say: Callable[[str], None]) -> list[dict]:
    """Alternating deploys and undeploys of one instance: ms until every interested node's
    OVS group of the service IP has (or no longer has) the instance."""
    nodes = sorted(bed.h.workers)
    for worker in setup.CONVERGE_CLIENTS:
        # A request from each client node makes it interested in the service.
        client = bed.orch.placed[(setup.CLIENT.key, setup.CLIENT.placement.index(worker))]
        bed.tool(client.container, "tcp-rr", bed.converge_ip, setup.TCP_PORT, 1)
    gid = int(ipaddress.IPv4Address(bed.converge_ip)) & GROUP_V4_MASK  # the agent's group id
    stable = bed.orch.placed[(CONVERGE.key, 0)]
    # The moving instance's node joins the interested nodes with its first deploy.
    interested = [n for n in nodes if n != setup.CONVERGE_MOVING]
    needles = {n: stable.instance_ip for n in interested}
    needles[setup.CONVERGE_STABLE] = stable.namespace_ip  # a local bucket DNATs to it
    _wait_all(bed, interested, gid, needles, True)
    out = []
    for i in range(changes):
        deploy = i % 2 == 0
        result = _deploy(bed, nodes, gid) if deploy else _undeploy(bed, nodes, gid)
        out.append(result)
        LOG.info("change %d (%s): %.1f ms", i + 1, result["kind"], result["ms"])
        time.sleep(SETTLE_S)
    ms = [r["ms"] for r in out]
    say(f"  {changes} changes: median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms")
    return out


def _deploy(bed: Bed, nodes: list[str], gid: int) -> dict:
    needles: dict[str, str] = {}
    watch = _GroupWatch(bed, nodes, gid, needles, present=True)
    start = time.perf_counter()
    watch.start(start)
    doc = bed.orch.schedule(CONVERGE, MOVING_NUMBER, setup.CONVERGE_MOVING)
    scheduled = (time.perf_counter() - start) * 1000
    [inst] = [i for i in doc["instance_list"] if i["instance_number"] == MOVING_NUMBER]
    for node in nodes:
        if node != setup.CONVERGE_MOVING:
            needles[node] = inst["instance_ip"]
    answer, call_ms = _attach(bed)
    attached = (time.perf_counter() - start) * 1000
    needles[setup.CONVERGE_MOVING] = answer["namespace_ip"]
    bed.orch.placed[(CONVERGE.key, MOVING_NUMBER)] = Placed(
        CONVERGE,
        MOVING_NUMBER,
        setup.CONVERGE_MOVING,
        bed.moving,
        answer.get("instance_ip"),
        answer.get("instance_ip_v6"),
        answer.get("namespace_ip"),
        time.monotonic(),
    )
    return {
        "kind": "deploy",
        "schedule_ms": scheduled,
        "attach_ms": attached,
        "attach_call_ms": call_ms,
        **watch.join(),
    }


def _attach(bed: Bed, timeout: float = 5.0) -> tuple[dict, float]:
    """Attach the moving instance's container as soon as its node knows the instance; the
    node's answer and how long the accepted call took (ms).

    A node refuses (404) an instance it has not heard of from its cluster yet; the retry gap
    is short so that the measured time is the system's, not the orchestrator's.
    """
    node = bed.h.nodes[setup.CONVERGE_MOVING]
    body = {"netns": bed.moving.path, "service": CONVERGE.job_name, "instance": MOVING_NUMBER}
    deadline = time.monotonic() + timeout
    while True:
        start = time.perf_counter()
        status, answer = node.call("POST", "/api/v1/containers", body)
        if status < 300:
            return answer, (time.perf_counter() - start) * 1000
        if status != 404 or time.monotonic() > deadline:
            raise RuntimeError(f"attach at {setup.CONVERGE_MOVING}: {status} {answer}")
        time.sleep(ATTACH_RETRY_S)


def _undeploy(bed: Bed, nodes: list[str], gid: int) -> dict:
    placed = bed.orch.placed[(CONVERGE.key, MOVING_NUMBER)]
    needles = {n: placed.instance_ip for n in nodes}
    needles[setup.CONVERGE_MOVING] = placed.namespace_ip
    watch = _GroupWatch(bed, nodes, gid, needles, present=False)
    start = time.perf_counter()
    watch.start(start)
    bed.orch.stop(CONVERGE, MOVING_NUMBER)
    return {"kind": "undeploy", **watch.join()}


def _wait_all(bed: Bed, nodes: list[str], gid: int, needles: dict, present: bool) -> None:
    watch = _GroupWatch(bed, nodes, gid, needles, present)
    watch.start(time.perf_counter())
    watch.join()


class _GroupWatch:
    """One thread per node polling the group until the needle is (not) in its buckets."""

    def __init__(self, bed: Bed, nodes: list[str], gid: int, needles: dict, present: bool):
        self.bed = bed
        self.nodes = nodes
        self.gid = gid
        self.needles = needles  # node -> address; filled in while the change is made
        self.present = present
        self.seen: dict[str, float] = {}
        self._start = 0.0
        self._threads = [
            threading.Thread(target=self._poll, args=(n,), daemon=True) for n in nodes
        ]

    def start(self, start: float) -> None:
        """Start polling; times count from ``start`` (a perf_counter value)."""
        self._start = start
        for thread in self._threads:
            thread.start()

    def join(self) -> dict:
        """Wait for every node; the slowest node's time and each node's."""
        for thread in self._threads:
            thread.join(CONVERGE_TIMEOUT_S + 1)
        nodes = [n for n in self.nodes if n not in self.seen]
        if nodes:
            raise TimeoutError(
                f"group {self.gid:#x} did not {'get' if self.present else 'lose'} "
                f"{self.needles} on {nodes} within {CONVERGE_TIMEOUT_S} s"
            )
        return {"ms": max(self.seen.values()), "nodes_ms": dict(self.seen)}

    def _poll(self, node: str) -> None:
        worker = self.bed.h.workers[node]
        reader = GroupReader(worker.ovs.mgmt_url(worker.bridge))
        deadline = self._start + CONVERGE_TIMEOUT_S
        try:
            while time.perf_counter() < deadline:
                needle = self.needles.get(node)
                if needle is not None and reader.has_address(self.gid, needle) == self.present:
                    self.seen[node] = (time.perf_counter() - self._start) * 1000
                    return
                time.sleep(POLL_GAP_S)
        finally:
            reader.close()
