"""Every root manager endpoint, driven over HTTP with the reference's request bodies."""

import pytest
import requests

from oaknet.client import ClientError
from tests.control.conftest import deploy_body

pytestmark = pytest.mark.control

JOB = "64b7f0c2a1b2c3d4e5f60718"
NAME = "shop.default.web.default"


def test_service_and_instance_lifecycle(root):
    job = root.orch.post("/api/net/service/deploy", deploy_body(JOB))
    assert job["_id"] == JOB and job["job_name"] == NAME
    assert job["applicationID"] == "app-shop" and job["app_name"] == "shop"
    assert job["service_ip_list"] == [
        {"IpType": "RR", "Address": "10.30.0.1", "Address_v6": "fdff:2000::1"},
        {"IpType": "Closest", "Address": "10.30.0.2", "Address_v6": "fdff:1000::1"},
    ]
    assert job["instance_list"] == []

    job = root.orch.post(
        "/api/net/instance/deploy", {"_id": JOB, "instance_number": 0, "cluster_id": "c1"}
    )
    (i0,) = job["instance_list"]
    assert (i0["instance_number"], i0["instance_ip"], i0["instance_ip_v6"], i0["cluster_id"]) == (
        0,
        "10.30.0.3",
        "fdff::1",
        "c1",
    )
    assert i0["status"] == "scheduled"
    # Our extension: the target node may come with the deploy, so routes exist early.
    job = root.orch.post(
        "/api/net/instance/deploy",
        {
            "_id": JOB,
            "instance_number": 1,
            "cluster_id": "c2",
            "worker_id": "w7",
            "host_ip": "192.0.2.7",
        },
    )
    i1 = job["instance_list"][1]
    assert (i1["instance_ip"], i1["worker_id"], i1["host_ip"]) == ("10.30.0.4", "w7", "192.0.2.7")

    job = root.c1.post(
        "/api/net/service/net_deploy_status",
        {
            "job_id": JOB,
            "instances": [
                {
                    "instance_number": 0,
                    "namespace_ip": "10.18.0.2",
                    "namespace_ip_v6": "fc00::2",
                    "host_ip": "192.0.2.1",
                    "host_port": "50103",
                }
            ],
        },
    )
    i0 = job["instance_list"][0]
    assert (
        i0["namespace_ip"],
        i0["namespace_ip_v6"],
        i0["host_ip"],
        i0["host_port"],
        i0["status"],
    ) == ("10.18.0.2", "fc00::2", "192.0.2.1", 50103, "running")

    # Table queries by name, by service IP (v4 and v6) and by instance IP register interest.
    resp = requests.get(
        f"{root.url}/api/net/service/shop_default_web_default/instances",
        headers={"Authorization": "Bearer tok-c2"},
        timeout=5,
    )
    assert resp.status_code == 200 and resp.json() == job
    assert int(resp.headers["X-Oaknet-Revision"]) > 0
    assert root.c3.get("/api/net/service/ip/10_30_0_1/instances") == job
    assert root.c3.get("/api/net/service/ip/fdff:2000::1/instances") == job
    assert root.c1.get("/api/net/service/ip/10.30.0.4/instances")["_id"] == JOB
    assert root.state.clusters.interests("c2") == {NAME}
    assert {c["cluster_id"] for c in root.state.clusters.interested(NAME)} == {"c1", "c2", "c3"}
    # The orchestrator may query too, without becoming "interested".
    assert root.orch.get("/api/net/service/shop_default_web_default/instances")["_id"] == JOB

    info = root.reader.get("/api/pubnet/service/netinfo/shop_default_web_default")
    assert info == root.reader.get("/api/pubnet/service/netinfo/ip/10_30_0_3")
    assert info["service_job_id"] == JOB and info["applicationID"] == "app-shop"
    assert info["instance_list"][0] == {
        "cluster_id": "c1",
        "instance_number": 0,
        "instance_ip": "10.30.0.3",
        "instance_ip_v6": "fdff::1",
    }
    assert "namespace_ip" not in str(info)
    avail = root.reader.get("/api/pubnet/service/netinfo/available-ip/2", {"v": "4"})
    assert avail == {
        "available_service_ips": [
            {"Address": "10.30.0.5", "Address_v6": None, "IpType": "IPv4"},
            {"Address": "10.30.0.6", "Address_v6": None, "IpType": "IPv4"},
        ]
    }
    both = root.reader.get("/api/pubnet/service/netinfo/available-ip/")["available_service_ips"]
    assert [a["IpType"] for a in both] == ["IPv4", "IPv6"]
    assert both[1]["Address_v6"] == "fdff:2000::2"
    assert root.reader.get("/api/pubnet/service/netinfo/available-ip")  # no slash works too

    out = root.c2.delete("/api/net/interest/shop_default_web_default")
    assert out["removed"] is True and root.state.clusters.interests("c2") == set()

    with pytest.raises(ClientError) as busy:
        root.orch.delete(f"/api/net/service/{JOB}")
    assert busy.value.status == 409 and "instances still deployed: 0, 1" in busy.value.detail

    job = root.orch.delete(f"/api/net/{JOB}/0")
    assert [i["instance_number"] for i in job["instance_list"]] == [1]
    assert root.orch.delete(f"/api/net/{JOB}/-1")["instance_list"] == []
    assert root.orch.delete(f"/api/net/service/{JOB}")["job_name"] == NAME
    with pytest.raises(ClientError) as gone:
        root.c1.get("/api/net/service/shop_default_web_default/instances")
    assert gone.value.status == 404

    # Every address came back: the next service gets the same ones.
    again = root.orch.post("/api/net/service/deploy", deploy_body("other1", app="blog"))
    assert [s["Address"] for s in again["service_ip_list"]] == ["10.30.0.1", "10.30.0.2"]
    assert root.state.pools.instance_v6.used(root.state.services.store) == 0


def test_services_listing(root):
    root.orch.post("/api/net/service/deploy", deploy_body("a1", app="a"))
    root.orch.post("/api/net/service/deploy", deploy_body("b1", app="b"))
    names = [j["job_name"] for j in root.reader.get("/api/net/services")]
    assert names == ["a.default.web.default", "b.default.web.default"]


def test_node_subnets(root):
    first = root.c1.get("/api/net/subnet")
    assert first == {
        "subnet_addr": "10.18.0.0",
        "subnet_addr_v6": "fc00::",
        "subnet_prefix": 26,
        "subnet_prefix_v6": 120,
    }
    assert root.c1.get("/api/net/subnet")["subnet_addr"] == "10.18.0.64"
    node = root.c2.get("/api/net/subnet", {"node": "worker-9"})
    assert node == root.c2.get("/api/net/subnet", {"node": "worker-9"})  # same node, same pair
    assert node["subnet_addr_v6"] == "fc00::200"
    with pytest.raises(ClientError) as foreign:
        root.c2.delete("/api/net/subnet/10_18_0_0")
    assert foreign.value.status == 404
    assert root.c1.delete("/api/net/subnet/10_18_0_0")["subnet_addr_v6"] == "fc00::"
    assert root.c3.get("/api/net/subnet")["subnet_addr"] == "10.18.0.0"


def test_cluster_registration(root):
    root.orch.post("/api/net/service/deploy", deploy_body(JOB))
    root.c1.get("/api/net/service/shop_default_web_default/instances")
    out = root.orch.post(
        "/api/net/cluster", {"cluster_id": "c1", "cluster_address": "::1", "cluster_port": "10111"}
    )
    assert out == {"message": "cluster registered", "cluster_id": "c1", "status": "ACTIVE"}
    assert root.state.clusters.get("c1")["cluster_port"] == 10111
    assert root.state.clusters.interests("c1") == {NAME}  # re-registration keeps interests
    # A cluster manager may register itself, and only itself.
    root.c3.post(
        "/api/net/cluster",
        {"cluster_id": "c3", "cluster_address": "cluster3.local", "cluster_port": 10113},
    )
    with pytest.raises(ClientError) as other:
        root.c3.post(
            "/api/net/cluster", {"cluster_id": "c1", "cluster_address": "::1", "cluster_port": 1}
        )
    assert other.value.status == 403 and other.value.field == "cluster_id"


def test_health_metrics_and_openapi_are_open(root):
    anon = root.client(None)
    health = anon.get("/api/health")
    assert health["status"] == "ok" and health["store"].startswith("sqlite:")
    root.orch.post("/api/net/service/deploy", deploy_body(JOB))
    text = requests.get(f"{root.url}/metrics", timeout=5).text
    assert "oaknet_services 1" in text
    assert 'oaknet_pool_used{pool="service_v4"} 2' in text
    assert (
        'oaknet_http_requests_total{method="POST",route="/api/net/service/deploy",'
        'status="200"} 1' in text
    )
    spec = anon.get("/api/openapi.json")
    assert spec["openapi"].startswith("3.")
    assert "/api/net/service/{service_name}/instances" in spec["paths"]
    assert spec["paths"]["/api/net/service/deploy"]["post"]["x-roles"] == ["orchestrator"]


def test_the_same_api_on_the_mongodb_adapter(tmp_path):
    """The root runs unchanged on MongoDB (mongomock here, a real server via its URL)."""
    import uuid

    from tests.control.conftest import RootServer, root_config

    cfg = root_config(tmp_path / "unused.db")
    cfg.store.url = f"mongomock://root{uuid.uuid4().hex[:8]}/oaknet"
    server = RootServer(cfg)
    try:
        server.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c1", "cluster_address": "::1", "cluster_port": 10110},
        )
        server.orch.post("/api/net/service/deploy", deploy_body(JOB))
        server.orch.post(
            "/api/net/instance/deploy", {"_id": JOB, "instance_number": 0, "cluster_id": "c1"}
        )
        server.c1.post(
            "/api/net/service/net_deploy_status",
            {
                "job_id": JOB,
                "instances": [
                    {
                        "instance_number": 0,
                        "namespace_ip": "10.18.0.2",
                        "namespace_ip_v6": "fc00::2",
                        "host_ip": "192.0.2.1",
                        "host_port": 50103,
                    }
                ],
            },
        )
        job = server.c1.get("/api/net/service/ip/10_30_0_3/instances")
        assert job["instance_list"][0]["status"] == "running"
        since = server.c1.watch("/api/net/watch", since=0, timeout=0)["revision"]
        server.restart()
        assert server.state.feed.store.description == "mongomock"
        assert server.c1.get("/api/net/service/shop_default_web_default/instances") == job
        server.orch.delete(f"/api/net/{JOB}/0")
        out = server.c1.watch("/api/net/watch", since=since, timeout=1)
        assert [c["doc"]["service"]["instances"] for c in out["changes"]] == [[]]
        server.orch.delete(f"/api/net/service/{JOB}")
        again = server.orch.post("/api/net/service/deploy", deploy_body("job2", app="blog"))
        assert again["service_ip_list"][0]["Address"] == "10.30.0.1"
    finally:
        server.stop()


def test_job_documents_convert_back_to_model_records(root):
    from oaknet.oakestra import service_from_job, table_entries

    root.orch.post("/api/net/service/deploy", deploy_body(JOB))
    root.orch.post(
        "/api/net/instance/deploy",
        {"_id": JOB, "instance_number": 0, "cluster_id": "c1", "host_ip": "192.0.2.9"},
    )
    job = root.c1.get("/api/net/service/shop_default_web_default/instances")
    service = service_from_job(job)
    assert service == root.state.services.get(JOB).service
    (entry,) = table_entries(service)
    assert [s["IpType"] for s in entry["service_ip"]] == ["RR", "Closest", "instance_ip"]
    assert entry["service_ip"][-1]["Address"] == entry["instance_ip"]
