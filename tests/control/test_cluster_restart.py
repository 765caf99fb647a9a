"""A restarted cluster manager resumes: from its root revision, and for its nodes' watchers."""

import pytest

from tests.control.conftest import RootServer, root_config
from tests.control.test_cluster_support import (
    ClusterServer,
    cluster_config,
    deploy_instance,
    deploy_service,
    wait_until,
)

pytestmark = pytest.mark.control

SHOP, SHOP_ID = "shop.default.web.default", "job-shop"
MAPS, MAPS_ID = "maps.default.web.default", "job-maps"


@pytest.fixture(params=["sqlite", "mongomock"])
def restartable(request, tmp_path, root):
    """Cluster manager c1 on a SQLite file or an in-memory MongoDB (mongomock) that outlives it."""
    cfg = cluster_config(tmp_path / "c1.db", "c1", root.url)
    if request.param == "mongomock":
        cfg.store.url = f"mongomock://{tmp_path.name}/oaknet"
    server = ClusterServer(cfg)
    try:
        yield server
    finally:
        server.stop()


def test_a_node_watcher_resumes_and_sees_every_change_once_in_order(root, restartable):
    c1 = restartable
    deploy_service(root, SHOP_ID, "shop")
    a2 = c1.node("a2")
    subnets = a2.register("192.0.2.12")
    a2.query(SHOP)
    a2.start_watching()
    expected = []

    def root_change(action, *args):
        job = action(*args)
        expected.append(sorted(i["instance_number"] for i in job["instance_list"]))

    def add(n):
        root_change(deploy_instance, root, SHOP_ID, n, "c1")

    def remove(n):
        root_change(root.orch.delete, f"/api/net/{SHOP_ID}/{n}")

    try:
        add(0)
        add(1)
        wait_until(lambda: a2.instances_seen(SHOP)[-1:] == [[0, 1]], what="[0, 1]")
        c1.restart()  # same store, same port
        add(2)
        remove(0)
        wait_until(lambda: c1.synced(root), what="the restarted cluster to catch up")
        position = c1.state.cache.position()
        c1.stop()  # the root changes while the cluster manager is down
        add(3)
        remove(1)
        c1.start()
        assert c1.state.follower.status()["revision"] >= position  # resumes, not from 0
        add(4)
        wait_until(lambda: a2.instances_seen(SHOP)[-1:] == [[2, 3, 4]], what="[2, 3, 4]")
    finally:
        a2.stop_watching()

    assert expected == [[0], [0, 1], [0, 1, 2], [1, 2], [1, 2, 3], [2, 3], [2, 3, 4]]
    assert a2.instances_seen(SHOP) == expected
    revisions = [c["revision"] for c in a2.changes]
    assert revisions == sorted(set(revisions))
    assert a2.resyncs == 0 and c1.state.follower.resyncs == 0
    # The cluster kept its root position and its node: same subnets, no new root request.
    assert c1.state.cache.position() == root.state.feed.store.head()
    assert a2.register("192.0.2.12") == subnets


def test_a_compacted_root_revision_replaces_the_cache(tmp_path):
    root = RootServer(root_config(tmp_path / "root.db", keep=3))
    c1 = None
    try:
        root.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": 10111},
        )
        c1 = ClusterServer(cluster_config(tmp_path / "c1.db", "c1", root.url))
        deploy_service(root, SHOP_ID, "shop")
        deploy_service(root, MAPS_ID, "maps")
        a2 = c1.node("a2")
        a2.register()
        a2.query(SHOP)
        a2.query(MAPS)
        wait_until(lambda: c1.synced(root), what="c1 to follow the root")
        since = a2.watch_once(0)["revision"]

        c1.stop()
        for n in range(5):
            deploy_instance(root, SHOP_ID, n, "c1")
        root.orch.delete(f"/api/net/service/{MAPS_ID}")
        root.state.feed.compact()
        c1.start()
        wait_until(lambda: c1.state.follower.resyncs == 1, what="the resync")

        out = a2.watch_once(since)
        assert not out["resync"]
        # One change per service replaced, not one per root change the cluster missed.
        shop, maps = sorted(out["changes"], key=lambda c: c["subject"], reverse=True)
        assert (shop["subject"], shop["op"]) == (SHOP, "put")
        assert [i["number"] for i in shop["doc"]["service"]["instances"]] == [0, 1, 2, 3, 4]
        assert (maps["subject"], maps["op"]) == (MAPS, "delete")
        assert [
            s["service"]["name"] for s in a2.api.get("/api/net/node/services")["services"]
        ] == [SHOP]
        # From the resync on the cluster follows the root change by change again.
        root.orch.delete(f"/api/net/{SHOP_ID}/4")
        wait_until(
            lambda: len(a2.watch_once(out["revision"])["changes"]) == 1, what="the next change"
        )
    finally:
        if c1 is not None:
            c1.stop()
        root.stop()
