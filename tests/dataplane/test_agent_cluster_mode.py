"""Agents in cluster mode: registration, attach reports, the watch feed, manager outages.

One testbed for the module: a root and a cluster manager in host ``mgr`` on the underlay,
three workers with an agent each in cluster mode. The tests run in file order and build on
each other where a docstring says so.
"""

from __future__ import annotations

import re
import time

import pytest
from agent_support import http_many
from test_agent_cluster_support import (
    Managers,
    service_ips,
    start_cluster_agents,
    wait_for,
)

from sdn.logic import peer_owner
from sdn.spec import owner_id, service_owner

pytestmark = pytest.mark.dataplane

WEB, WEB_ID = "shop.prod.web.default", "web"
CLIENT, CLIENT_ID = "shop.prod.client.default", "client"
NEAR = "shop.prod.near.default"
W1, W2, W3 = "192.0.2.1", "192.0.2.2", "192.0.2.3"


class Bed:
    """The module's testbed: managers, agents and the containers the tests made."""

    def __init__(self, tb, workers):
        self.tb = tb
        self.workers = workers
        self.mgrs = Managers(tb, [w.name for w in workers])
        self.agents = start_cluster_agents(tb, self.mgrs, workers)
        self.by_ip = {a.worker.ip4: a for a in self.agents}
        self.c: dict[str, object] = {}

    def agent(self, node_ip: str):
        """The agent of a node."""
        return self.by_ip[node_ip]

    def attach(self, name: str, node_ip: str, service: str, number: int, server: str = "") -> dict:
        """A container on a node attached as (service, instance), with an HTTP server."""
        agent = self.agent(node_ip)
        cont = self.tb.add_container(agent.worker, name)
        self.c[name] = cont
        answer = agent.attach(cont, service, number)
        if server:
            self.tb.start_http_server(cont, server)
        return answer


@pytest.fixture(scope="module")
def bed(module_testbed, three_workers):
    bed = Bed(module_testbed, three_workers)
    yield bed
    bed.mgrs.close()


def names(results: list[dict]) -> dict[str, int]:
    """How many answers came from each server name (errors by their name)."""
    out: dict[str, int] = {}
    for r in results:
        key = r["info"]["name"] if "info" in r else r.get("error")
        out[key] = out.get(key, 0) + 1
    return out


def test_1_register_gives_subnets_and_attach_reports_the_placement(bed):
    nodes = bed.mgrs.ns.call(bed.mgrs.cluster_reader.get, "/api/net/nodes")
    by_id = {n["node_id"]: n for n in nodes}
    assert set(by_id) == {"w1", "w2", "w3"}
    health = {a.worker.name: a.health() for a in bed.agents}
    for agent in bed.agents:
        node = by_id[agent.worker.name]
        assert node["host_ip"] == agent.worker.ip4
        cluster = health[agent.worker.name]["cluster"]
        assert cluster["registered"] and cluster["connected"], cluster
    subnets = {n["subnet_addr"] for n in nodes}
    assert len(subnets) == 3

    web = bed.mgrs.deploy_service(WEB_ID, WEB)
    bed.mgrs.deploy_instance(WEB_ID, 0, "w2")
    client = bed.mgrs.deploy_service(CLIENT_ID, CLIENT)
    bed.mgrs.deploy_instance(CLIENT_ID, 0, "w1")
    answer = bed.attach("web0", W2, WEB, 0, server="web-0")
    node2 = by_id["w2"]
    assert answer["namespace_ip"].rsplit(".", 1)[0] == node2["subnet_addr"].rsplit(".", 1)[0]
    bed.attach("c1", W1, CLIENT, 0)
    job = bed.mgrs.job(WEB)
    [inst] = job["instance_list"]
    assert (inst["host_ip"], inst["namespace_ip"]) == (W2, answer["namespace_ip"])
    assert inst["namespace_ip_v6"] == answer["namespace_ip_v6"]
    bed.web_ips = service_ips(web)
    bed.client_ips = service_ips(client)

    # As offline: a service or instance nobody knows cannot be attached.
    other = bed.tb.add_container(bed.agent(W3).worker, "nobody")
    status, body = bed.agent(W3).call(
        "POST", "/api/v1/containers", {"netns": other.path, "service": "a.b.c.d", "instance": 0}
    )
    assert (status, body["error"]) == (404, "unknown_service"), body
    status, body = bed.agent(W3).call(
        "POST", "/api/v1/containers", {"netns": other.path, "service": WEB, "instance": 7}
    )
    assert (status, body["error"]) == (404, "unknown_instance"), body


def test_2_another_node_learns_instances_from_the_feed(bed):
    """w1 resolves web on first use, then sees a second instance (on w3) via the feed only."""
    c1 = bed.c["c1"].netns
    rr = bed.web_ips["rr"]
    assert names(http_many(bed.tb, c1, rr, 5)) == {"web-0": 5}
    queries = bed.agent(W1).health()["cluster"]["queries"]

    bed.mgrs.deploy_instance(WEB_ID, 1, "w3")
    bed.attach("web1", W3, WEB, 1, server="web-1")
    wait_for(
        lambda: (
            all(i["namespace_ip"] for i in bed.agent(W1).services()[WEB]["instances"])
            and len(bed.agent(W1).services()[WEB]["instances"]) == 2
        ),
        what="w1 to see web instance 1 placed",
    )
    count = names(http_many(bed.tb, c1, rr, 40))
    assert set(count) == {"web-0", "web-1"} and min(count.values()) >= 8, count
    assert bed.agent(W1).health()["cluster"]["queries"] == queries  # the feed, no query
    peers = {p["node_ip"] for p in bed.agent(W1).health()["peers"]}
    assert peers == {W2, W3}


def test_3_ipv6_and_server_sees_client_instance_ip(bed):
    c1 = bed.c["c1"].netns
    results = http_many(bed.tb, c1, bed.web_ips["rr6"], 10)
    assert set(names(results)) <= {"web-0", "web-1"} and len(results) == 10, results
    client_v6 = bed.mgrs.job(CLIENT)["instance_list"][0]
    assert {r["info"]["client"][0] for r in results} == {client_v6["instance_ip_v6"]}


def flow_packets(worker) -> dict[int, int]:
    """n_packets of every br-int flow, by cookie."""
    out = {}
    for line in worker.ofctl("dump-flows").splitlines():
        cookie = re.search(r"cookie=(0x[0-9a-f]+)", line)
        packets = re.search(r"n_packets=(\d+)", line)
        if cookie and packets:
            out[int(cookie.group(1), 16)] = int(packets.group(1))
    return out


def test_4_cluster_manager_down_traffic_flows_and_a_root_change_arrives_later(bed):
    """w1 knows web (tests 2-3). The cluster manager stops; w1's agent restarts meanwhile
    (it resumes from its saved state); the root removes web instance 1; the cluster manager
    comes back and w1 follows: no flush, untouched flows keep their counters."""
    tb, c1, rr = bed.tb, bed.c["c1"].netns, bed.web_ips["rr"]
    a1 = bed.agent(W1)
    web_owner = owner_id(service_owner(WEB))
    before = flow_packets(a1.worker)
    nodes = bed.mgrs.ns.call(bed.mgrs.cluster_reader.get, "/api/net/nodes")
    subnet_before = next(n["subnet_addr"] for n in nodes if n["node_id"] == "w1")

    bed.mgrs.stop_cluster()
    try:
        wait_for(lambda: not a1.health()["cluster"]["connected"], what="w1 to see the outage")
        count = names(http_many(tb, c1, rr, 20))
        assert set(count) == {"web-0", "web-1"}, count
        a1.stop()
        a1.start(wait=False)
        health = a1.wait_reconciled(timeout=40)
        changes = health["switch"]["last_reconcile"]
        assert {v for k, v in changes.items() if not k.startswith("had_")} == {0}, changes
        assert health["cluster"]["registered"] is False
        assert set(names(http_many(tb, c1, rr, 20))) == {"web-0", "web-1"}
        bed.mgrs.undeploy_instance(WEB_ID, 1)
        time.sleep(1)
        assert len(a1.services()[WEB]["instances"]) == 2  # nobody told w1 yet
    finally:
        bed.mgrs.start_cluster()

    wait_for(
        lambda: len(a1.services()[WEB]["instances"]) == 1, timeout=20, what="w1 to drop web.1"
    )
    assert names(http_many(tb, c1, rr, 10)) == {"web-0": 10}
    health = a1.health()["cluster"]
    assert health["registered"] and health["connected"] and health["resyncs"] == 0, health
    # Registered again after the restart: the same subnets.
    nodes = bed.mgrs.ns.call(bed.mgrs.cluster_reader.get, "/api/net/nodes")
    [node] = [n for n in nodes if n["node_id"] == "w1"]
    assert node["subnet_addr"] == subnet_before
    # web has no instance on w3 any more and nothing else does: the tunnel to w3 went too.
    assert {p["node_ip"] for p in a1.health()["peers"]} == {W2}
    after = flow_packets(a1.worker)
    changed = {web_owner, owner_id(peer_owner(W3))}
    untouched = [c for c in before if c >> 32 not in changed]
    assert untouched and [c for c in untouched if c not in after] == []
    assert all(after[c] >= before[c] for c in untouched)
    # The client's own port flows carried the test's traffic all along: they kept counting.
    assert sum(after[c] for c in untouched) > sum(before[c] for c in untouched)


def test_5_detach_is_reported_and_other_nodes_stop_using_the_instance(bed):
    """web.0 on w2 and a new web.2 on w3: w2 detaches web.0, w1 then only reaches web.2."""
    bed.mgrs.deploy_instance(WEB_ID, 2, "w3")
    bed.attach("web2", W3, WEB, 2, server="web-2")
    c1, rr = bed.c["c1"].netns, bed.web_ips["rr"]
    wait_for(
        lambda: set(names(http_many(bed.tb, c1, rr, 10))) == {"web-0", "web-2"},
        timeout=15,
        what="w1 to use web.0 and web.2",
    )
    bed.agent(W2).detach(WEB, 0)
    wait_for(
        lambda: not bed.agent(W1).services()[WEB]["instances"][0]["namespace_ip"],
        what="w1 to see web.0 stopped",
    )
    assert names(http_many(bed.tb, c1, rr, 10)) == {"web-2": 10}


def test_6_root_down_known_traffic_flows_and_reports_wait_in_the_outbox(bed):
    """The root stops: w1 keeps reaching web.2; w2 attaches web.3 (scheduled before), its
    report waits in w2's outbox; once the root is back every node learns the placement."""
    c1, rr, a2 = bed.c["c1"].netns, bed.web_ips["rr"], bed.agent(W2)
    bed.mgrs.deploy_instance(WEB_ID, 3, "w2")
    wait_for(lambda: a2.services()[WEB]["instances"][-1]["number"] == 3, what="w2 to see web.3")
    bed.mgrs.stop_root()
    try:
        assert names(http_many(bed.tb, c1, rr, 10)) == {"web-2": 10}
        started = time.monotonic()
        bed.attach("web3", W2, WEB, 3, server="web-3")
        assert time.monotonic() - started < 8
        assert a2.health()["cluster"]["pending_reports"] == 1
        time.sleep(1)
        assert names(http_many(bed.tb, c1, rr, 6)) == {"web-2": 6}
    finally:
        bed.mgrs.start_root()
    wait_for(
        lambda: a2.health()["cluster"]["pending_reports"] == 0,
        timeout=20,
        what="w2's report to reach the root",
    )
    wait_for(
        lambda: set(names(http_many(bed.tb, c1, rr, 20))) == {"web-2", "web-3"},
        timeout=15,
        what="w1 to use web.3",
    )


def test_7_closest_over_tunnels_the_serving_nodes_made_back(bed):
    """near runs on w2 and w3; w1 reaches it by its closest IP. Its fast-failover buckets need
    BFD up on w1's tunnels, which needs w2 and w3 to make tunnels back to w1 (learned)."""
    job = bed.mgrs.deploy_service("near", NEAR)
    for number, (node, worker) in enumerate(((W2, "w2"), (W3, "w3"))):
        bed.mgrs.deploy_instance("near", number, worker)
        bed.attach(f"near{number}", node, NEAR, number, server=f"near-{worker}")
    closest = service_ips(job)["closest"]
    c1 = bed.c["c1"].netns

    def all_to_one() -> bool:
        got = names(http_many(bed.tb, c1, closest, 6))
        return len(got) == 1 and next(iter(got)) in ("near-w2", "near-w3")

    wait_for(all_to_one, timeout=20, what="w1 to reach near by its closest IP")

    def bfd_back() -> bool:
        return all(
            p["bfd"].get("forwarding")
            for agent in (bed.agent(W2), bed.agent(W3))
            for p in agent.health()["peers"]
            if p["node_ip"] == W1
        ) and all(W1 in {p["node_ip"] for p in a.health()["peers"]} for a in bed.agents[1:])

    wait_for(bfd_back, timeout=15, what="w2 and w3 to run BFD back to w1")


def test_8_cluster_store_lost_agents_resync_and_register_again(bed):
    """The cluster manager comes back with an empty store: its feed starts over, the agents
    get a resync, register again (same subnets from the root), keep their local services,
    and find the others again on demand."""
    bed.mgrs.undeploy_instance(WEB_ID, 0)  # detached in test 5; the root has the final word
    a1, c1, rr = bed.agent(W1), bed.c["c1"].netns, bed.web_ips["rr"]
    nodes = bed.mgrs.ns.call(bed.mgrs.cluster_reader.get, "/api/net/nodes")
    subnets = {n["node_id"]: n["subnet_addr"] for n in nodes}
    resyncs = a1.health()["cluster"]["resyncs"]

    bed.mgrs.stop_cluster()
    for suffix in ("", "-wal", "-shm"):
        (bed.mgrs.dir / f"cluster.db{suffix}").unlink(missing_ok=True)
    bed.mgrs.start_cluster()

    wait_for(
        lambda: (
            a1.health()["cluster"]["resyncs"] > resyncs and a1.health()["cluster"]["registered"]
        ),
        timeout=20,
        what="w1 to resync and register again",
    )
    assert CLIENT in a1.services()
    wait_for(
        lambda: set(names(http_many(bed.tb, c1, rr, 10))) == {"web-2", "web-3"},
        timeout=15,
        what="w1 to reach web again",
    )
    nodes = bed.mgrs.ns.call(bed.mgrs.cluster_reader.get, "/api/net/nodes")
    assert {n["node_id"]: n["subnet_addr"] for n in nodes}["w1"] == subnets["w1"]
