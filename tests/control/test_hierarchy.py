"""Root + two cluster managers + worker nodes: changes reach exactly the interested nodes.

Cluster c1 has nodes a1, a2, a3; cluster c2 has b1, b2, b3. The nodes are HTTP clients of
their cluster manager, written here; every manager is a real server on loopback.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.control.test_cluster_support import (
    c1_fixture,  # noqa: F401  (the c1 fixture)
    c2_fixture,  # noqa: F401  (the c2 fixture)
    deploy_instance,
    deploy_service,
    wait_until,
)

pytestmark = pytest.mark.control

SHOP, SHOP_ID = "shop.default.web.default", "job-shop"
MAPS, MAPS_ID = "maps.default.web.default", "job-maps"


@pytest.fixture
def nodes(c1, c2):
    """Every node registered at its cluster, with an underlay address from 192.0.2.0/24."""
    out = {}
    for i, name in enumerate(("a1", "a2", "a3", "b1", "b2", "b3")):
        node = (c1 if name[0] == "a" else c2).node(name)
        node.register(f"192.0.2.{11 + i}")
        out[name] = node
    try:
        yield out
    finally:
        for node in out.values():
            node.stop_watching(wait=False)  # all at once: each may be in a long poll
        for node in out.values():
            node.stop_watching()


def test_an_instance_reaches_exactly_the_interested_nodes(root, c1, c2, nodes):
    deploy_service(root, SHOP_ID, "shop")
    deploy_instance(root, SHOP_ID, 0, "c1", "a1", "192.0.2.11")
    deploy_instance(root, SHOP_ID, 1, "c2", "b1", "192.0.2.14")
    # a2 asks by name, b2 by the round-robin service IP; a1 and b1 run an instance (and so are
    # interested too, once their cluster caches the service); a3 and b3 never ask.
    nodes["a2"].query(SHOP)
    rr_ip = nodes["b2"].query_ip("10.30.0.1")["service_ip_list"][0]["Address"]
    assert rr_ip == "10.30.0.1"
    assert root.state.clusters.interests("c1") == {SHOP}
    assert root.state.clusters.interests("c2") == {SHOP}
    assert c1.state.cache.interested_nodes(SHOP) == {"a1", "a2"}
    assert c2.state.cache.interested_nodes(SHOP) == {"b1", "b2"}
    for node in nodes.values():
        node.start_watching()
    interested = ("a1", "a2", "b1", "b2")

    # A new instance, scheduled at the root, in c1.
    deploy_instance(root, SHOP_ID, 2, "c1")
    for name in interested:
        wait_until(
            lambda n=nodes[name]: n.instances_seen(SHOP)[-1:] == [[0, 1, 2]],
            what=f"{name} to see instance 2",
        )
    # The nodes report where their instances run; interested nodes of both clusters see it.
    nodes["a1"].deployed(SHOP, 0, "10.18.0.2", "fc00::2", "192.0.2.11")
    nodes["b1"].deployed(SHOP, 1, "10.18.0.194", "fc00::302", "192.0.2.14")

    def placed(node, number):
        for change in reversed(node.changes):
            inst = [i for i in change["doc"]["service"]["instances"] if i["number"] == number]
            if inst:
                return inst[0]["namespace_ip"] is not None
        return False

    for name in interested:
        wait_until(
            lambda n=nodes[name]: placed(n, 0) and placed(n, 1),
            what=f"{name} to see both instances placed",
        )

    # Undeploying instance 2 at the root removes it from every interested feed.
    root.orch.delete(f"/api/net/{SHOP_ID}/2")
    for name in interested:
        wait_until(
            lambda n=nodes[name]: n.instances_seen(SHOP)[-1:] == [[0, 1]],
            what=f"{name} to lose instance 2",
        )
    time.sleep(0.3)  # time for a stray change to arrive where it must not
    for name in ("a3", "b3"):
        assert nodes[name].changes == [], name
    for name in interested:
        seen = nodes[name].instances_seen(SHOP)
        assert seen[0] == [0, 1, 2] and seen[-1] == [0, 1], (name, seen)
        revisions = [c["revision"] for c in nodes[name].changes]
        assert revisions == sorted(set(revisions)), name
        assert nodes[name].resyncs == 0

    # The service removed at the root is a delete in every interested feed.
    root.orch.delete(f"/api/net/{SHOP_ID}/-1")
    root.orch.delete(f"/api/net/service/{SHOP_ID}")
    for name in interested:
        wait_until(
            lambda n=nodes[name]: n.changes[-1]["op"] == "delete",
            what=f"{name} to see the service go",
        )
    assert nodes["a3"].changes == [] and nodes["b3"].changes == []


def test_an_instance_its_node_stopped_is_dropped_in_every_cluster(root, c1, c2, nodes):
    deploy_service(root, SHOP_ID, "shop")
    deploy_instance(root, SHOP_ID, 0, "c1", "a1", "192.0.2.11")
    deploy_instance(root, SHOP_ID, 1, "c2", "b1", "192.0.2.14")
    nodes["a2"].query(SHOP)
    nodes["b2"].query(SHOP)
    nodes["a1"].deployed(SHOP, 0, "10.18.0.2", "fc00::2", "192.0.2.11")
    for name in ("a2", "b2"):
        nodes[name].start_watching()

    def state_of(node, number):
        for change in reversed(node.changes):
            for inst in change["doc"]["service"]["instances"]:
                if inst["number"] == number:
                    return inst["status"], inst["namespace_ip"]
        return None

    # a1's container goes away without an undeploy at the root (a crash, a runtime's stop).
    nodes["a1"].undeployed(SHOP, 0)
    for name in ("a2", "b2"):
        wait_until(
            lambda n=nodes[name]: state_of(n, 0) == ("stopped", None),
            what=f"{name} to see instance 0 stopped",
        )
    [job] = [j for j in root.reader.get("/api/net/services") if j["_id"] == SHOP_ID]
    [inst] = [i for i in job["instance_list"] if i["instance_number"] == 0]
    assert inst["status"] == "stopped", inst

    # Reported deployed again, it is back everywhere.
    nodes["a1"].deployed(SHOP, 0, "10.18.0.3", "fc00::3", "192.0.2.11")
    for name in ("a2", "b2"):
        wait_until(
            lambda n=nodes[name]: state_of(n, 0) == ("running", "10.18.0.3"),
            what=f"{name} to see instance 0 running again",
        )
    for name in ("a2", "b2"):
        nodes[name].stop_watching()


def test_a_service_of_the_other_cluster_is_resolved_through_the_root(root, c1, c2, nodes):
    deploy_service(root, MAPS_ID, "maps")
    deploy_instance(root, MAPS_ID, 0, "c2", "b1", "192.0.2.14")
    nodes["b1"].deployed(MAPS, 0, "10.18.0.194", "fc00::302", "192.0.2.14")
    assert c1.state.cache.entry(MAPS) is None
    assert root.state.clusters.interests("c1") == set()

    # a3 in c1 asks for a service only c2 runs: c1 asks the root, which now feeds c1.
    answer = nodes["a3"].query(MAPS)
    (inst,) = answer["instance_list"]
    assert (inst["cluster_id"], inst["worker_id"], inst["host_ip"]) == ("c2", "b1", "192.0.2.14")
    assert (inst["namespace_ip"], inst["namespace_ip_v6"]) == ("10.18.0.194", "fc00::302")
    assert root.state.clusters.interests("c1") == {MAPS}
    assert c1.state.cache.interested_nodes(MAPS) == {"a3"}
    # By instance IP from another c1 node: answered from c1's cache now.
    assert nodes["a2"].query_ip(inst["instance_ip_v6"])["job_name"] == MAPS

    # The chain onwards: b1 moves its instance; c2 forwards to the root, the root feeds c1,
    # and a3 sees the new address without asking again.
    nodes["a3"].start_watching(answer["revision"])
    nodes["b1"].deployed(MAPS, 0, "10.18.0.195", "fc00::303", "192.0.2.14")

    def moved():
        return any(
            c["doc"]["service"]["instances"][0]["namespace_ip"] == "10.18.0.195"
            for c in nodes["a3"].changes
        )

    wait_until(moved, what="a3 to see the move made in c2")
    assert nodes["a1"].changes == []


def test_concurrent_interest_changes_keep_root_and_cluster_in_step(root, c1):
    """Twelve nodes add and drop their interest at once: the root stays interested exactly
    while some node is, and the cache holds the service exactly then."""
    deploy_service(root, SHOP_ID, "shop")
    names = [f"n{i:02d}" for i in range(12)]
    workers = [c1.node(n) for n in names]
    for node in workers:
        node.register()

    def churn(node, rounds, keep):
        for _ in range(rounds):
            node.query(SHOP)
            node.api.delete(f"/api/net/node/interest/{SHOP.replace('.', '_')}")
        if keep:
            node.query(SHOP)

    for keep_some in (True, False):
        with ThreadPoolExecutor(len(workers)) as pool:
            futures = [
                pool.submit(churn, n, 5, keep_some and i % 4 == 0) for i, n in enumerate(workers)
            ]
            for future in futures:
                future.result()
        wait_until(lambda: not c1.state.cache.pending_removals(), what="removals sent")
        interested = c1.state.cache.interested_nodes(SHOP)
        assert interested == ({"n00", "n04", "n08"} if keep_some else set())
        assert (SHOP in root.state.clusters.interests("c1")) is keep_some
        assert (c1.state.cache.entry(SHOP) is not None) is keep_some
