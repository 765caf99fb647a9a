"""Every cluster manager endpoint, driven over HTTP with the reference's request bodies."""

import subprocess
import sys

import pytest
import requests

from oaknet.client import Client, ClientError
from tests.control.conftest import REPO, RootServer, root_config
from tests.control.test_cluster_support import (
    ClusterServer,
    c1_fixture,  # noqa: F401  (the c1 fixture)
    cluster_config,
    cluster_process,
    deploy_instance,
    deploy_service,
    wait_until,
)

pytestmark = pytest.mark.control

JOB = "64b7f0c2a1b2c3d4e5f60718"
NAME = "shop.default.web.default"
PATH_NAME = "shop_default_web_default"


def test_node_registration_keeps_the_nodes_subnets(root, c1):
    a1 = c1.node("a1")
    first = a1.register("192.0.2.11")
    assert (first["node_id"], first["host_ip"]) == ("a1", "192.0.2.11")
    assert (first["subnet_addr"], first["subnet_prefix"]) == ("10.18.0.0", 26)
    assert (first["subnet_addr_v6"], first["subnet_prefix_v6"]) == ("fc00::", 120)
    # The same node again (even without a body) keeps its pair; the root handed out one pair.
    assert a1.register() == first
    assert a1.register("192.0.2.11") == first
    assert c1.node("a2").register()["subnet_addr"] == "10.18.0.64"
    assert root.c1.get("/api/net/subnet", {"node": "a1"})["subnet_addr"] == "10.18.0.0"
    assert [n["node_id"] for n in c1.reader.get("/api/net/nodes")] == ["a1", "a2"]

    # A node that leaves gives its pair back to the root, and the next node gets it.
    assert c1.node("a1").api.delete("/api/net/node/register")["node_id"] == "a1"
    assert c1.node("a3").register()["subnet_addr"] == "10.18.0.0"
    with pytest.raises(ClientError) as gone:
        c1.node("a1").query(NAME)
    assert gone.value.status == 404 and gone.value.field == "node_id"


def test_orchestrator_deployment_endpoints(root, c1):
    deploy_service(root, JOB, "shop")
    deploy_instance(root, JOB, 0, "c1")
    out = c1.orch.post("/api/net/deployment", {"job_name": NAME})
    assert out == {"message": "job stored succesfully", "job_name": NAME, "instances": 1}
    assert root.state.clusters.interests("c1") == {NAME}
    (job,) = c1.reader.get("/api/net/services")
    assert job["_id"] == JOB and job["job_name"] == NAME and job["deployed"] is True
    assert job["service_ip_list"][0] == {
        "IpType": "RR",
        "Address": "10.30.0.1",
        "Address_v6": "fdff:2000::1",
    }
    assert job["instance_list"][0]["instance_ip"] == "10.30.0.3"
    assert job["applicationID"] == "app-shop"  # the descriptor's fields, as the root's

    with pytest.raises(ClientError) as unknown:
        c1.orch.post("/api/net/deployment", {"job_name": "no.such.service.here"})
    assert (unknown.value.status, unknown.value.field) == (404, "job_name")

    # Undeploying from the cluster drops the cache and tells the root (nobody else needs it).
    out = c1.orch.delete(f"/api/net/deployment/{NAME}")
    assert out == {"message": "job removed succesfully", "job_name": NAME}
    assert c1.reader.get("/api/net/services") == []
    assert root.state.clusters.interests("c1") == set()
    with pytest.raises(ClientError) as again:
        c1.orch.delete(f"/api/net/deployment/{PATH_NAME}")
    assert (again.value.status, again.value.field) == (404, "job_name")


def test_table_queries_and_node_reports(root, c1):
    deploy_service(root, JOB, "shop")
    deploy_instance(root, JOB, 0, "c1", "a1", "192.0.2.11")
    deploy_instance(root, JOB, 1, "c2")
    a1, a2 = c1.node("a1"), c1.node("a2")
    a1.register("192.0.2.11")
    a2.register("192.0.2.12")

    # A miss is resolved at the root, which then counts the cluster as interested.
    assert root.state.clusters.interests("c1") == set()
    answer = a2.query(NAME)
    assert root.state.clusters.interests("c1") == {NAME}
    assert (answer["app_name"], answer["query_key"]) == (NAME, NAME)
    i0, i1 = answer["instance_list"]
    assert (i0["instance_number"], i0["instance_ip"], i0["worker_id"], i0["cluster_id"]) == (
        0,
        "10.30.0.3",
        "a1",
        "c1",
    )
    assert i0["service_ip"] == [
        {"IpType": "RR", "Address": "10.30.0.1", "Address_v6": "fdff:2000::1"},
        {"IpType": "Closest", "Address": "10.30.0.2", "Address_v6": "fdff:1000::1"},
        {"IpType": "instance_ip", "Address": "10.30.0.3", "Address_v6": "fdff::1"},
    ]
    assert i1["cluster_id"] == "c2" and i1["namespace_ip"] is None
    assert answer["service"]["name"] == NAME and answer["revision"] >= 0
    # By service IP (v4 with '_', v6) and by instance IP: the same service, from the cache.
    for key in ("10_30_0_1", "fdff:2000::1", "10.30.0.4", "fdff::2"):
        assert a2.api.get(f"/api/net/node/service/ip/{key}/instances")["job_name"] == NAME
    assert c1.state.cache.interested_nodes(NAME) == {"a1", "a2"}  # a1 runs instance 0

    # a1 reports its instance (the reference's service/deployed body); the root has it.
    since = a2.watch_once(0)["revision"]
    out = a1.deployed(NAME, 0, "10.18.0.2", "fc00::2", "192.0.2.11")
    assert out["instance"]["namespace_ip"] == "10.18.0.2"
    rooted = root.orch.get(f"/api/net/service/{PATH_NAME}/instances")["instance_list"][0]
    assert (rooted["namespace_ip"], rooted["namespace_ip_v6"], rooted["host_ip"]) == (
        "10.18.0.2",
        "fc00::2",
        "192.0.2.11",
    )
    assert (rooted["host_port"], rooted["worker_id"], rooted["status"]) == (50103, "a1", "running")
    seen = wait_until(lambda: a2.watch_once(since)["changes"], what="a2 sees the report")
    inst = seen[-1]["doc"]["service"]["instances"][0]
    assert (inst["namespace_ip"], inst["status"]) == ("10.18.0.2", "running")

    # The node's address changes: forwarded to the root for its instance.
    out = a1.api.post(
        "/api/net/node/service/address-changed",
        {"appname": NAME, "instance_number": 0, "host_ip": "192.0.2.21", "host_port": 50104},
    )
    assert out["instance"]["host_ip"] == "192.0.2.21"
    rooted = root.orch.get(f"/api/net/service/{PATH_NAME}/instances")["instance_list"][0]
    assert (rooted["host_ip"], rooted["host_port"]) == ("192.0.2.21", 50104)
    assert c1.reader.get("/api/net/nodes")[0]["host_ip"] == "192.0.2.21"

    # The node stops its instance: the cluster's nodes stop using it at once.
    since = a2.watch_once(0)["revision"]
    out = a1.api.post("/api/net/node/service/undeployed", {"appname": NAME, "instance_number": 0})
    assert (out["instance"]["status"], out["instance"]["namespace_ip"]) == ("stopped", None)
    change = a2.watch_once(since)["changes"][-1]
    assert change["doc"]["service"]["instances"][0]["status"] == "stopped"
    # Reported running again (same addresses): visible again.
    a1.deployed(NAME, 0, "10.18.0.2", "fc00::2", "192.0.2.21")
    (mine,) = [s for s in a2.api.get("/api/net/node/services")["services"]]
    assert mine["service"]["instances"][0]["status"] == "running"

    # Another node cannot report a1's instance.
    with pytest.raises(ClientError) as foreign:
        a2.api.post("/api/net/node/service/undeployed", {"appname": NAME, "instance_number": 0})
    assert (foreign.value.status, foreign.value.field) == (409, "instance_number")
    # Instance 1 runs in cluster c2: the root refuses c1's report of it.
    with pytest.raises(ClientError) as other_cluster:
        a2.deployed(NAME, 1, "10.18.0.66", "fc00::42", "192.0.2.12")
    assert other_cluster.value.status == 403


def test_interest_removal_reaches_the_root_with_the_last_node(root, c1):
    deploy_service(root, JOB, "shop")
    a1, a2 = c1.node("a1"), c1.node("a2")
    for n in (a1, a2):
        n.register()
        n.query(NAME)
    assert root.state.clusters.interests("c1") == {NAME}
    out = a1.api.delete(f"/api/net/node/interest/{PATH_NAME}")
    assert out == {"message": "deregistered", "job_name": NAME, "removed": True}
    assert root.state.clusters.interests("c1") == {NAME}  # a2 still needs it
    assert a1.api.delete(f"/api/net/node/interest/{PATH_NAME}")["removed"] is False
    a2.api.delete(f"/api/net/node/interest/{NAME}")
    assert root.state.clusters.interests("c1") == set()
    assert c1.state.cache.entry(NAME) is None

    # With the root down, the removal waits in the outbox and is sent when it is back.
    a1.query(NAME)
    port = root.srv.port
    root.stop()
    wait_until(lambda: not c1.state.follower.connected, what="the follower to notice")
    assert c1.client(None).get("/api/health")["status"] == "degraded"
    a1.api.delete(f"/api/net/node/interest/{PATH_NAME}")
    assert c1.state.cache.pending_removals() == [NAME]
    root.cfg.server.port = port
    root.start()
    wait_until(lambda: not c1.state.cache.pending_removals(), what="the queued removal")
    assert root.state.clusters.interests("c1") == set()
    wait_until(lambda: c1.client(None).get("/api/health")["status"] == "ok")


def test_job_update_push_refreshes_at_once(root, c1):
    deploy_service(root, JOB, "shop")
    c1.orch.post("/api/net/deployment", {"job_name": NAME})
    # Without the feed (follower stopped), only the push brings the new instance.
    c1.state.follower.stop()
    deploy_instance(root, JOB, 0, "c1")
    assert c1.state.cache.entry(NAME).service.instances == []
    for kind in ("DEPLOYMENT", "UNDEPLOYMENT"):
        body = {"job_name": NAME, "instance_number": 0, "type": kind}
        out = c1.orch.post("/api/net/job/update", body)
        assert out == {"message": "update notification received", "job_name": NAME}
    wait_until(lambda: c1.state.cache.entry(NAME).service.instances, what="the refresh")
    # A push about a service this cluster does not hold is accepted and ignored.
    c1.orch.post(
        "/api/net/job/update",
        {"job_name": "x.y.z.w", "instance_number": -1, "type": "UNDEPLOYMENT"},
    )
    assert c1.state.cache.entry("x.y.z.w") is None


def test_health_metrics_and_openapi_are_open(root, c1):
    anon = c1.client(None)
    wait_until(lambda: anon.get("/api/health")["status"] == "ok", what="the root link")
    health = anon.get("/api/health")
    assert health["cluster_id"] == "c1" and health["store"].startswith("sqlite:")
    assert health["root"]["url"] == root.url and health["root"]["connected"] is True
    c1.node("a1").register()
    text = requests.get(f"{c1.url}/metrics", timeout=5).text
    assert "oaknet_nodes 1" in text and "oaknet_root_connected 1" in text
    assert 'route="/api/net/node/register",status="200"} 1' in text
    spec = anon.get("/api/openapi.json")
    assert spec["openapi"].startswith("3.")
    assert spec["paths"]["/api/net/node/watch"]["get"]["x-roles"] == ["node"]
    assert spec["paths"]["/api/net/deployment"]["post"]["x-roles"] == ["orchestrator"]
    assert "/api/net/node/service/ip/{service_ip}/instances" in spec["paths"]
    assert "POST   /api/net/job/update" in spec["info"]["description"]


def test_python_m_cluster_manager_serves(tmp_path, root):
    with cluster_process(tmp_path, "c2", root.url) as url:
        anon = Client(url, timeout=5)
        wait_until(lambda: anon.get("/api/health")["status"] == "ok", what="the root link")
        node = Client(url, token="tok-b1", timeout=5)
        assert node.post("/api/net/node/register", {})["subnet_addr"] == "10.18.0.0"
        deploy_service(root, JOB, "shop")
        assert node.get(f"/api/net/node/service/{PATH_NAME}/instances")["job_name"] == NAME
        assert root.state.clusters.interests("c2") == {NAME}
    log = (tmp_path / "c2.log").read_text()
    assert "cluster_manager serving on [127.0.0.1]" in log
    assert "tok-c2" not in log and "tok-b1" not in log  # tokens are never logged


def test_a_bad_config_is_refused_with_a_clear_message(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cluster_id: c1\nauth: {tokens: {t: x}}\nroot: {url: 'http://[::1]:1'}\n")
    out = subprocess.run(
        [sys.executable, "-m", "cluster_manager", "--config", str(cfg)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "config root.token: the root needs a token" in out.stderr


def test_an_unregistered_cluster_is_told_and_can_register_itself(tmp_path):
    root = RootServer(root_config(tmp_path / "root.db"))
    clusters = []
    try:
        deploy_service(root, JOB, "shop")
        # Nobody registered c1 at the root: the node gets a clear 502, not a "no such service".
        plain = ClusterServer(cluster_config(tmp_path / "plain.db", "c1", root.url))
        clusters.append(plain)
        plain.node("a1").register()
        with pytest.raises(ClientError) as refused:
            plain.node("a1").query(NAME)
        assert refused.value.status == 502 and "not registered at the root" in refused.value.detail
        assert plain.state.cache.entries() == []
        # With an advertised address the cluster manager registers itself on start.
        own = ClusterServer(
            cluster_config(
                tmp_path / "own.db",
                "c2",
                root.url,
                advertise_address="127.0.0.1",
                advertise_port=10112,
            )
        )
        clusters.append(own)
        wait_until(lambda: root.state.clusters.get("c2"), what="c2 to register itself")
        assert root.state.clusters.get("c2")["cluster_port"] == 10112
        own.node("b1").register()
        assert own.node("b1").query(NAME)["job_name"] == NAME
    finally:
        for cluster in clusters:
            cluster.stop()
        root.stop()
