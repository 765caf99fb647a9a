"""The data-plane benchmark's testbed: the demo's hierarchy, its services, and the peer paths."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import testbed as tb_lib
from demo import topology as topo
from demo.hierarchy import Hierarchy
from demo.orchestrator import Orchestrator, Placed

from ovs_setup.bridge import list_ports
from sdn.nodeops import tunnel_port_name

LOG = logging.getLogger(__name__)

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dp_tools.py")
TCP_PORT = 80  # dp_tools' request/answer server
UDP_PORT = 9000  # dp_tools' echo
# One iperf3 server per path: a test stuck on one path (iperf3 serves one test at a time)
# cannot hold up the others.
IPERF_PORTS = {"service": 5201, "direct": 5202, "kernel_nat": 5203, "instance_ip": 5204}
# One request/answer server per path for the connection measurements. The service, instance-IP
# and kernel-NAT paths reach the target with the same source address as another path (the
# client's instance IP, or its namespace IP), so with one port they would reuse the tuples
# another path left in TIME_WAIT (the client wraps its source ports within a minute at
# thousands of connections per second), with timestamps and sequence numbers chosen for
# another destination address: one path's figures would depend on the others'.
PATH_TCP_PORTS = {"service": 8001, "direct": 8002, "kernel_nat": 8003, "instance_ip": 8004}
# The address the client's own kernel translates (kube-proxy style) to the instance's
# namespace IP; outside every semantic range, so oaknet never sees it.
KERNEL_VIP = "10.99.0.1"
NFT_TABLE = "oakbench"
# Cookie of the flows that carry the untranslated path; the agent's cookies have their owner
# kind in the upper 32 bits, so this one cannot collide with them.
DIRECT_COOKIE = 0xBE4C
DIRECT_PRIORITY = 1000
VNI = 0x10
CLIENT_NODE, SERVER_NODE = "w1", "w2"  # node A (client) and node B (instance), one cluster
FIRST_NODE = "w3"  # first-contact instances: the other cluster, never seen by w1's cluster
CONVERGE_STABLE, CONVERGE_MOVING = "w4", "w2"
CONVERGE_CLIENTS = ("w1", "w3")

CLIENT = topo.ServicePlan("bcl", "bench-bcl", "client", 0, (CLIENT_NODE, *CONVERGE_CLIENTS[1:]))
TARGET = topo.ServicePlan("tgt", "bench-tgt", "client", TCP_PORT, (SERVER_NODE,))
CONVERGE = topo.ServicePlan("conv", "bench-conv", "client", TCP_PORT, (CONVERGE_STABLE,))
MOVING_NUMBER = 1  # CONVERGE's instance that is deployed and undeployed


def first_plans(count: int) -> list[topo.ServicePlan]:
    """``count`` services with one instance each on FIRST_NODE, used once for first contact."""
    return [
        topo.ServicePlan(f"fc{i}", f"bench-fc{i}", "client", TCP_PORT, (FIRST_NODE,))
        for i in range(count)
    ]


@dataclass
class Paths:
    """The addresses the client reaches the target instance by, one per measured path."""

    service: str  # round-robin service IP (oaknet: DNAT + SNAT in OVS conntrack)
    direct: str  # the instance's namespace IP over the bench's untranslated flows
    kernel_nat: str  # KERNEL_VIP: netfilter DNAT in the client's namespace, then as direct
    instance_ip: str  # the instance's instance IP (oaknet: single-instance translation)

    def items(self) -> list[tuple[str, str]]:
        """(path name, address) pairs in a fixed order."""
        return list(vars(self).items())


@dataclass
class Bed:
    """Everything the measurements need from the built testbed."""

    tb: tb_lib.Testbed
    h: Hierarchy
    orch: Orchestrator
    client: tb_lib.Container
    target: Placed
    paths: Paths
    firsts: list[tuple[topo.ServicePlan, str]] = field(default_factory=list)  # plan, RR IP
    moving: tb_lib.Container | None = None
    converge_ip: str = ""

    def tool(self, where: tb_lib.Container, *args: object, timeout: float = 120) -> dict:
        """Run ``dp_tools.py ARGS`` in a container; its JSON answer."""
        proc = self.tb.run_in(where, [sys.executable, TOOLS, *map(str, args)], timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"dp_tools {args} in {where.netns}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)


class BenchHierarchy(Hierarchy):
    """The demo's hierarchy, with agents that do not audit their switch.

    An audit (every 60 s by default) removes every flow the agent does not own, so it would
    remove the untranslated path's flows in the middle of a measurement.
    """

    def _agent_config(self, name: str) -> dict:
        return {**super()._agent_config(name), "audit_interval_s": 0}


def build(tb: tb_lib.Testbed, h: Hierarchy, say: Callable[[str], None], first_count: int) -> Bed:
    """The hierarchy (root, 2 clusters, 4 workers, agents) with the bench's services."""
    say("dataplane: underlay, 3 manager hosts, 4 workers with their own OVS")
    h.build_network()
    # The demo delays frames between workers (a userspace delay line): none for benchmarks.
    for a, b in itertools.combinations(sorted(h.workers), 2):
        tb.set_delay(h.workers[a], h.workers[b], 0)
    say("dataplane: root and cluster managers, node agents")
    h.start_managers()
    h.start_agents()
    orch = Orchestrator(h)
    plans = [CLIENT, TARGET, CONVERGE, *first_plans(first_count)]
    for plan in plans:
        orch.deploy_service(plan)
    say(f"dataplane: {len(plans)} services deployed at the root; starting their instances")
    placed = {plan.key: orch.deploy(plan) for plan in plans}
    for plan in plans[1:]:
        for p in placed[plan.key]:
            start_servers(tb, p.container)
    target = placed[TARGET.key][0]
    for port in IPERF_PORTS.values():
        tb.start_iperf3(target.container, port)
    for k, port in enumerate(PATH_TCP_PORTS.values(), 1):
        start_servers(tb, target.container, port, UDP_PORT + k)
    client = placed[CLIENT.key][0].container
    paths = Paths(
        service=orch.service_ip(TARGET, "RR"),
        direct=target.namespace_ip,
        kernel_nat=KERNEL_VIP,
        instance_ip=target.instance_ip,
    )
    bed = Bed(tb, h, orch, client, target, paths)
    bed.firsts = [(plan, orch.service_ip(plan, "RR")) for plan in plans[3:]]
    bed.converge_ip = orch.service_ip(CONVERGE, "RR")
    # The moving instance's container exists before the measured deploys start.
    bed.moving = tb.add_container(
        h.workers[CONVERGE_MOVING], topo.container_name(CONVERGE, MOVING_NUMBER, CONVERGE_MOVING)
    )
    start_servers(tb, bed.moving)
    for plan, _ in bed.firsts:
        wait_reported(h, plan)
    return bed


def start_servers(
    tb: tb_lib.Testbed, where: tb_lib.Container, tcp_port: int = TCP_PORT, udp_port: int = UDP_PORT
) -> None:
    """dp_tools' TCP answer and UDP echo servers in a container."""
    tb.run_in(
        where,
        [sys.executable, TOOLS, "serve", str(tcp_port), str(udp_port)],
        background=True,
        ready_line="ready",
    )


def wait_reported(h: Hierarchy, plan: topo.ServicePlan, timeout: float = 20.0) -> None:
    """Wait until the root knows where every instance of ``plan`` runs (its namespace IP)."""
    path = f"/api/net/service/{plan.job_name.replace('.', '_')}/instances"
    deadline = time.monotonic() + timeout
    while True:
        doc = h.root_api.get(path)
        instances = doc.get("instance_list", []) if isinstance(doc, dict) else []
        if instances and all(i.get("namespace_ip") for i in instances):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the root never learned where {plan.key} runs: {doc}")
        time.sleep(0.1)


def add_peer_paths(bed: Bed) -> None:
    """The untranslated path client <-> instance namespace IPs, and the kernel NAT in front.

    Four flows at a priority above oaknet's classify table forward the two namespace IPs
    through the VXLAN tunnel between the two nodes, without conntrack: the overlay's own cost,
    the baseline every translation is compared with. The kernel NAT peer is an nftables DNAT
    rule in the client's namespace (output hook, the kernel's conntrack) to the same address.
    """
    a, b = bed.h.workers[CLIENT_NODE], bed.h.workers[SERVER_NODE]
    client_port = _attached(bed, CLIENT_NODE, CLIENT)
    server_port = _attached(bed, SERVER_NODE, TARGET)
    tun_ab = _wait_tunnel(a, b.ip4)
    tun_ba = _wait_tunnel(b, a.ip4)
    c_ip, s_ip = client_port["namespace_ip"], server_port["namespace_ip"]
    to_tunnel = f"set_field:{VNI:#x}->tun_id,output:"
    flows = [
        (a, client_port["ofport"], s_ip, to_tunnel + str(tun_ab)),
        (a, tun_ab, c_ip, _deliver(client_port)),
        (b, tun_ba, s_ip, _deliver(server_port)),
        (b, server_port["ofport"], c_ip, to_tunnel + str(tun_ba)),
    ]
    for worker, in_port, dst, actions in flows:
        worker.ofctl(
            "add-flow",
            f"table=0,priority={DIRECT_PRIORITY},cookie={DIRECT_COOKIE:#x},ip,"
            f"in_port={in_port},nw_dst={dst},actions={actions}",
        )
    rules = (
        f"table ip {NFT_TABLE} {{\n"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"    ip daddr {KERNEL_VIP} dnat to {s_ip}\n"
        "  }\n"
        "}\n"
    )
    proc = tb_lib.procs.run(bed.client.netns, ["nft", "-f", "-"], input=rules)
    if proc.returncode != 0:
        raise RuntimeError(f"nft in {bed.client.netns}: {proc.stderr.strip()}")
    LOG.info(
        "peer paths: %s <-> %s untranslated, %s -> %s by nftables", c_ip, s_ip, KERNEL_VIP, s_ip
    )


def direct_flows_present(bed: Bed) -> bool:
    """Whether the bench's untranslated flows are still on both nodes (an agent that resyncs
    with its switch removes them as foreign)."""
    match = f"cookie={DIRECT_COOKIE:#x}/-1"
    return all(len(bed.h.workers[n].dump_flows(match)) == 2 for n in (CLIENT_NODE, SERVER_NODE))


def _deliver(port: dict) -> str:
    """Actions that hand a frame to a local container's port."""
    return f"set_field:{port['mac']}->eth_dst,output:{port['ofport']}"


def _attached(bed: Bed, worker: str, plan: topo.ServicePlan) -> dict:
    """The node's record of the container of ``plan``'s instance on ``worker``."""
    answer = bed.h.nodes[worker].request("GET", "/api/v1/containers")
    items = answer["containers"] if isinstance(answer, dict) else answer
    for item in items:
        if item["service"] == plan.job_name:
            return item
    raise LookupError(f"no container of {plan.key} on {worker}: {answer}")


def _wait_tunnel(worker: tb_lib.Worker, peer_ip: str, timeout: float = 20.0) -> int:
    """The ofport of ``worker``'s tunnel to ``peer_ip`` (the agent makes it on first need)."""
    name = tunnel_port_name(peer_ip)
    deadline = time.monotonic() + timeout
    while True:
        port = list_ports(worker.db_url, worker.bridge).get(name)
        if port and port.get("ofport"):
            return port["ofport"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{worker.name} has no tunnel to {peer_ip}")
        time.sleep(0.1)


def check_paths(bed: Bed) -> None:
    """One UDP round trip and one TCP request on every path; raise if one does not work."""
    for name, address in bed.paths.items():
        udp = bed.tool(bed.client, "udp-rtt", address, UDP_PORT, 3, 0.01)
        tcp = bed.tool(bed.client, "tcp-rr", address, PATH_TCP_PORTS[name], 3)
        if not udp["ms"] or not tcp["ms"]:
            raise RuntimeError(f"path {name} ({address}) does not work: udp {udp}, tcp {tcp}")
