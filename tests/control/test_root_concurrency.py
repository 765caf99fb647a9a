"""Concurrent deploys never share an address: threads on one server, and two processes."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from oaknet.client import Client
from tests.control.conftest import deploy_body, root_process

pytestmark = pytest.mark.control


def addresses(jobs):
    out = []
    for job in jobs:
        for sip in job["service_ip_list"]:
            out += [sip["Address"], sip["Address_v6"]]
        for inst in job["instance_list"]:
            out += [inst["instance_ip"], inst["instance_ip_v6"]]
    return out


def deploy_many(clients, n):
    def one(i):
        client = clients[i % len(clients)]
        job = client.post("/api/net/service/deploy", deploy_body(f"job{i}", app=f"app{i}"))
        return client.post(
            "/api/net/instance/deploy",
            {"_id": job["_id"], "instance_number": 0, "cluster_id": "c1"},
        )

    with ThreadPoolExecutor(max_workers=25) as pool:
        return list(pool.map(one, range(n)))


def test_fifty_concurrent_deploys_get_distinct_addresses(root):
    jobs = deploy_many([root.orch], 50)
    got = addresses(jobs)
    assert len(got) == 50 * 6 and len(set(got)) == len(got)
    assert root.state.services.count() == 50


def test_two_manager_processes_on_one_store(tmp_path):
    db = tmp_path / "shared.db"
    with (
        root_process(tmp_path, db, "root-a") as url_a,
        root_process(tmp_path, db, "root-b") as url_b,
    ):
        a = Client(url_a, token="tok-orchestrator", timeout=20, retries=0)
        b = Client(url_b, token="tok-orchestrator", timeout=20, retries=0)
        jobs = deploy_many([a, b], 50)
        got = addresses(jobs)
        assert len(got) == 300 and len(set(got)) == 300
        # One feed: 100 changes (50 services, 50 instances), revisions unique and in order,
        # the same seen through either process.
        feed_a = a.watch("/api/net/watch", since=0, timeout=0)
        feed_b = b.watch("/api/net/watch", since=0, timeout=0)
        revisions = [c["revision"] for c in feed_a["changes"]]
        assert revisions == list(range(1, 101))
        assert feed_a == feed_b
        # Both processes serve the same table.
        assert a.get("/api/net/services") == b.get("/api/net/services")
        assert len(a.get("/api/net/services")) == 50
        # The same name through the other process is still a conflict.
        with pytest.raises(Exception) as dup:
            b.post("/api/net/service/deploy", deploy_body("other", app="app3"))
        assert getattr(dup.value, "status", None) == 409
