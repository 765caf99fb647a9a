"""The root's change feed: per-cluster interest filtering, restarts, compaction, fan-out."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.control.conftest import RootServer, deploy_body, root_config

pytestmark = pytest.mark.control

JOB = "64b7f0c2a1b2c3d4e5f60718"
NAME = "shop.default.web.default"
PATH = "/api/net/service/shop_default_web_default/instances"


def instances_in(change):
    return [i["number"] for i in change["doc"]["service"]["instances"]]


def test_undeploy_reaches_every_interested_watcher_and_frees_the_ip_last(root):
    root.orch.post("/api/net/service/deploy", deploy_body(JOB))
    for n in (0, 1):
        root.orch.post(
            "/api/net/instance/deploy", {"_id": JOB, "instance_number": n, "cluster_id": "c1"}
        )
    root.c1.get(PATH)
    root.c2.get(PATH)  # c3 never asks: not interested
    head = root.orch.watch("/api/net/watch", since=0, timeout=0)["revision"]
    store, pool = root.state.services.store, root.state.pools.service_v4
    ip0 = root.orch.get(PATH)["instance_list"][0]["instance_ip"]

    with ThreadPoolExecutor(3) as ex:
        futures = {
            c: ex.submit(getattr(root, c).watch, "/api/net/watch", head, 1.5)
            for c in ("c1", "c2", "c3")
        }
        time.sleep(0.3)
        started = time.monotonic()
        root.orch.delete(f"/api/net/{JOB}/1")
        futures["c1"].result()
        futures["c2"].result()
        woken = time.monotonic() - started
        results = {c: f.result() for c, f in futures.items()}
    for c in ("c1", "c2"):
        (change,) = results[c]["changes"]
        assert change["subject"] == NAME and change["op"] == "put"
        assert instances_in(change) == [0]
    assert results["c3"]["changes"] == []
    assert woken < 1  # woken by the change, not by the 1.5 s timeout

    # Instance 0 still holds its address; the freed one (of instance 1) is the one reused.
    assert pool.owner(store, ip0) == f"instance/{JOB}/0"
    job = root.orch.post(
        "/api/net/instance/deploy", {"_id": JOB, "instance_number": 5, "cluster_id": "c2"}
    )
    assert job["instance_list"][1]["instance_ip"] != ip0
    root.orch.delete(f"/api/net/{JOB}/0")
    assert pool.owner(store, ip0) is None
    job = root.orch.post(
        "/api/net/instance/deploy", {"_id": JOB, "instance_number": 6, "cluster_id": "c2"}
    )
    assert job["instance_list"][-1]["instance_ip"] == ip0

    # Removing the service is a delete change for the interested clusters.
    root.orch.delete(f"/api/net/{JOB}/-1")
    root.orch.delete(f"/api/net/service/{JOB}")
    feed = root.c2.watch("/api/net/watch", since=head, timeout=0)
    assert [c["op"] for c in feed["changes"]][-1] == "delete"


def test_restart_loses_nothing_and_a_watcher_resumes_exactly_once(tmp_path):
    server = RootServer(root_config(tmp_path / "root.db"))
    try:
        server.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c1", "cluster_address": "::1", "cluster_port": 10110},
        )
        server.orch.post("/api/net/service/deploy", deploy_body(JOB))
        server.c1.get(PATH)
        since = server.c1.watch("/api/net/watch", since=0, timeout=0)["revision"]
        expected = []

        def change(n):
            job = server.orch.post(
                "/api/net/instance/deploy", {"_id": JOB, "instance_number": n, "cluster_id": "c1"}
            )
            expected.append(sorted(i["instance_number"] for i in job["instance_list"]))

        change(0)
        change(1)
        server.restart()
        change(2)
        server.orch.delete(f"/api/net/{JOB}/0")
        expected.append([1, 2])
        server.restart()
        change(3)

        seen = []
        revisions = []
        while True:
            out = server.c1.watch("/api/net/watch", since=since, timeout=0)
            assert not out["resync"]
            if not out["changes"]:
                break
            seen += [instances_in(c) for c in out["changes"]]
            revisions += [c["revision"] for c in out["changes"]]
            since = out["revision"]
        assert seen == expected
        assert revisions == sorted(set(revisions))
        # Addresses survived too: the next service does not get a taken address.
        other = server.orch.post("/api/net/service/deploy", deploy_body("job2", app="blog"))
        taken = {i["instance_ip"] for i in server.orch.get(PATH)["instance_list"]}
        assert not taken & {s["Address"] for s in other["service_ip_list"]}
    finally:
        server.stop()


def test_compacted_revision_gets_a_resync_with_the_interesting_state(tmp_path):
    server = RootServer(root_config(tmp_path / "root.db", keep=3))
    try:
        server.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c1", "cluster_address": "::1", "cluster_port": 10110},
        )
        server.orch.post("/api/net/service/deploy", deploy_body(JOB))
        server.orch.post("/api/net/service/deploy", deploy_body("job2", app="blog"))
        server.c1.get(PATH)
        for n in range(5):
            server.orch.post(
                "/api/net/instance/deploy", {"_id": JOB, "instance_number": n, "cluster_id": "c1"}
            )
        server.state.feed.compact()
        out = server.c1.watch("/api/net/watch", since=1, timeout=0)
        assert out["resync"] is True and out["changes"] == []
        assert [s["service"]["name"] for s in out["services"]] == [NAME]  # only its interest
        assert len(out["services"][0]["service"]["instances"]) == 5
        assert out["revision"] == server.state.feed.store.head()
        everything = server.orch.watch("/api/net/watch", since=1, timeout=0)
        assert len(everything["services"]) == 2
        # From the resync revision on, the watcher follows normally.
        server.orch.delete(f"/api/net/{JOB}/4")
        after = server.c1.watch("/api/net/watch", since=out["revision"], timeout=0)
        assert not after["resync"] and instances_in(after["changes"][0]) == [0, 1, 2, 3]
        # A revision from the future (another store) also resyncs.
        assert server.c1.watch("/api/net/watch", since=10**6, timeout=0)["resync"]
    finally:
        server.stop()


def test_a_hundred_long_poll_watchers_are_woken_together(tmp_path):
    cfg = root_config(tmp_path / "root.db")
    cfg.server.threads = 128
    server = RootServer(cfg)
    try:
        server.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c1", "cluster_address": "::1", "cluster_port": 10110},
        )
        server.orch.post("/api/net/service/deploy", deploy_body(JOB))
        server.c1.get(PATH)
        since = server.c1.watch("/api/net/watch", since=0, timeout=0)["revision"]
        clients = [server.client("tok-c1") for _ in range(100)]
        done = []
        lock = threading.Lock()

        def wait(client):
            out = client.watch("/api/net/watch", since=since, timeout=20)
            with lock:
                done.append((time.monotonic(), len(out["changes"])))

        threads = [threading.Thread(target=wait, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while server.state.feed.watchers < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.state.feed.watchers == 100
        fired = time.monotonic()
        server.orch.post(
            "/api/net/instance/deploy", {"_id": JOB, "instance_number": 0, "cluster_id": "c1"}
        )
        for t in threads:
            t.join(15)
        assert len(done) == 100 and all(n == 1 for _, n in done)
        spread = max(t for t, _ in done) - fired
        print(f"100 watchers woken within {spread * 1000:.0f} ms")
        # Woken by the change, not by their 20 s timeout (how fast is the benchmark's matter:
        # here 100 clients share the server's process and its GIL).
        assert spread < 10
    finally:
        server.stop()
