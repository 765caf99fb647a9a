"""Bad input gets a clear 4xx naming the field, and leaves the store exactly as it was."""

import json
import logging

import pytest
import requests

from tests.control.conftest import deploy_body, dump

pytestmark = pytest.mark.control

JOB = "64b7f0c2a1b2c3d4e5f60718"


@pytest.fixture
def deployed(root):
    """A service with instance 0 in cluster c1 and instance 1 in c2."""
    root.orch.post("/api/net/service/deploy", deploy_body(JOB, RR_ip="10.30.0.9"))
    root.orch.post(
        "/api/net/instance/deploy", {"_id": JOB, "instance_number": 0, "cluster_id": "c1"}
    )
    root.orch.post(
        "/api/net/instance/deploy", {"_id": JOB, "instance_number": 1, "cluster_id": "c2"}
    )
    return root


def send(root, method, path, body=None, token="tok-orchestrator", raw=None):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    return requests.request(method, root.url + path, data=data, headers=headers, timeout=10)


def descriptor(**changes):
    body = deploy_body("newjob1", app="blog")
    for key, value in changes.items():
        if value is None:
            body["deployment_descriptor"].pop(key)
        else:
            body["deployment_descriptor"][key] = value
    return body


REPORT = {
    "instance_number": 0,
    "namespace_ip": "10.18.0.2",
    "namespace_ip_v6": "fc00::2",
    "host_ip": "192.0.2.1",
    "host_port": 50103,
}

CASES = [
    # (method, path, body, token, status, field)
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(app_name="bl-og"),
        None,
        400,
        "deployment_descriptor.app_name",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(service_name="x" * 31),
        None,
        400,
        "deployment_descriptor.service_name",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(microservice_namespace="a b"),
        None,
        400,
        "deployment_descriptor.microservice_namespace",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(service_ns=None, microservice_namespace=None),
        None,
        400,
        "deployment_descriptor.service_ns",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(app_ns=7),
        None,
        400,
        "deployment_descriptor.app_ns",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(RR_ip="10.31.0.1"),
        None,
        400,
        "deployment_descriptor.RR_ip",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(RR_ip="banana"),
        None,
        400,
        "deployment_descriptor.RR_ip",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(RR_ip=5),
        None,
        400,
        "deployment_descriptor.RR_ip",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(RR_ip_v6="fdff:3000::1"),
        None,
        400,
        "deployment_descriptor.RR_ip_v6",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(RR_ip="10.30.0.9"),
        None,
        409,
        "deployment_descriptor.RR_ip",
    ),
    # 10.30.0.1 is the service's closest IP (10.30.0.2 an instance IP): one pool, so taken.
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(RR_ip="10.30.0.1"),
        None,
        409,
        "deployment_descriptor.RR_ip",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(Closest_ip_v6="fdff:2000::5"),
        None,
        400,
        "deployment_descriptor.Closest_ip_v6",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        descriptor(**{"$where": 1}),
        None,
        400,
        "deployment_descriptor",
    ),
    ("POST", "/api/net/service/deploy", {"deployment_descriptor": {}}, None, 400, "_id"),
    (
        "POST",
        "/api/net/service/deploy",
        {"_id": ["x"], "deployment_descriptor": {}},
        None,
        400,
        "_id",
    ),
    (
        "POST",
        "/api/net/service/deploy",
        {"_id": "a/b", "deployment_descriptor": {}},
        None,
        400,
        "_id",
    ),
    ("POST", "/api/net/service/deploy", {"_id": "x1"}, None, 400, "deployment_descriptor"),
    (
        "POST",
        "/api/net/service/deploy",
        {"_id": "x1", "deployment_descriptor": "no"},
        None,
        400,
        "deployment_descriptor",
    ),
    # The same full name under another id is a conflict, not a merge.
    ("POST", "/api/net/service/deploy", deploy_body("otherid"), None, 409, "job_name"),
    # The same id under another name is a conflict too.
    ("POST", "/api/net/service/deploy", deploy_body(JOB, app="blog"), None, 409, "_id"),
    ("DELETE", "/api/net/service/nosuchjob", None, None, 404, "_id"),
    ("DELETE", f"/api/net/service/{JOB}", None, None, 409, "_id"),
    (
        "POST",
        "/api/net/instance/deploy",
        {"_id": "nosuchjob", "instance_number": 0, "cluster_id": "c1"},
        None,
        404,
        "_id",
    ),
    (
        "POST",
        "/api/net/instance/deploy",
        {"_id": JOB, "instance_number": "abc", "cluster_id": "c1"},
        None,
        400,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/instance/deploy",
        {"_id": JOB, "instance_number": True, "cluster_id": "c1"},
        None,
        400,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/instance/deploy",
        {"_id": JOB, "instance_number": -2, "cluster_id": "c1"},
        None,
        400,
        "instance_number",
    ),
    # An instance number must also fit the path that undeploys it.
    (
        "POST",
        "/api/net/instance/deploy",
        {"_id": JOB, "instance_number": 10**20, "cluster_id": "c1"},
        None,
        400,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/instance/deploy",
        {"_id": JOB, "instance_number": 2},
        None,
        400,
        "cluster_id",
    ),
    (
        "POST",
        "/api/net/instance/deploy",
        {"_id": JOB, "instance_number": 2, "cluster_id": {}},
        None,
        400,
        "cluster_id",
    ),
    (
        "POST",
        "/api/net/instance/deploy",
        {"_id": JOB, "instance_number": 2, "cluster_id": "c1", "host_ip": "192.0.2.300"},
        None,
        400,
        "host_ip",
    ),
    ("DELETE", "/api/net/nosuchjob/0", None, None, 404, "_id"),
    ("DELETE", f"/api/net/{JOB}/7", None, None, 404, "instance_number"),
    ("DELETE", f"/api/net/{JOB}/one", None, None, 400, "instance_number"),
    ("DELETE", f"/api/net/{JOB}/-5", None, None, 400, "instance_number"),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": "nosuchjob", "instances": [REPORT]},
        "tok-c1",
        404,
        "_id",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": [{**REPORT, "instance_number": 9}]},
        "tok-c1",
        404,
        "instances[0].instance_number",
    ),
    # Instance 1 runs in cluster c2: cluster c1 may not report it.
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": [{**REPORT, "instance_number": 1}]},
        "tok-c1",
        403,
        "instances[0]",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": [{**REPORT, "namespace_ip": "10.18.0.999"}]},
        "tok-c1",
        400,
        "instances[0].namespace_ip",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": [{**REPORT, "namespace_ip": "fc00::9"}]},
        "tok-c1",
        400,
        "instances[0].namespace_ip",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": [{**REPORT, "host_port": 70000}]},
        "tok-c1",
        400,
        "instances[0].host_port",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": [{k: v for k, v in REPORT.items() if k != "host_ip"}]},
        "tok-c1",
        400,
        "instances[0].host_ip",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": [{"instance_number": 0, "host_ip": "192.0.2.1"}]},
        "tok-c1",
        400,
        "instances[0].namespace_ip",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": "all"},
        "tok-c1",
        400,
        "instances",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": [5]},
        "tok-c1",
        400,
        "instances[0]",
    ),
    (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": JOB, "instances": []},
        "tok-c1",
        400,
        "instances",
    ),
    (
        "POST",
        "/api/net/cluster",
        {"cluster_id": "c9", "cluster_address": "not an address!", "cluster_port": 1},
        None,
        400,
        "cluster_address",
    ),
    (
        "POST",
        "/api/net/cluster",
        {"cluster_id": "c9", "cluster_address": "::1", "cluster_port": 0},
        None,
        400,
        "cluster_port",
    ),
    (
        "POST",
        "/api/net/cluster",
        {"cluster_address": "::1", "cluster_port": 1},
        None,
        400,
        "cluster_id",
    ),
    ("GET", "/api/net/service/not_a_name/instances", None, "tok-c1", 400, "service_name"),
    ("GET", "/api/net/service/ip/10_30_0/instances", None, "tok-c1", 400, "service_ip"),
    ("GET", "/api/net/service/ip/10_30_7_7/instances", None, "tok-c1", 404, "service"),
    ("GET", "/api/net/service/nope_default_web_default/instances", None, "tok-c1", 404, "service"),
    ("DELETE", "/api/net/interest/shop_default_web_default", None, "tok-c3", 200, None),
    ("GET", "/api/net/subnet?node=a/b", None, "tok-c1", 400, "node"),
    ("DELETE", "/api/net/subnet/10_18_0_0", None, "tok-c1", 404, "subnet"),
    ("DELETE", "/api/net/subnet/banana", None, "tok-c1", 400, "subnet"),
    ("GET", "/api/net/watch?since=-1", None, "tok-c1", 400, "since"),
    ("GET", "/api/net/watch?since=x", None, "tok-c1", 400, "since"),
    ("GET", "/api/net/watch?since=0&timeout=soon", None, "tok-c1", 400, "timeout"),
    (
        "GET",
        "/api/pubnet/service/netinfo/nope_default_web_default",
        None,
        "tok-reader",
        404,
        "service_name",
    ),
    ("GET", "/api/pubnet/service/netinfo/ip/10_30_9_9", None, "tok-reader", 404, "service_ip"),
    ("GET", "/api/pubnet/service/netinfo/available-ip/0", None, "tok-reader", 400, "count"),
    ("GET", "/api/pubnet/service/netinfo/available-ip/5000", None, "tok-reader", 400, "count"),
    ("GET", "/api/pubnet/service/netinfo/available-ip/2?v=5", None, "tok-reader", 400, "v"),
]


@pytest.mark.parametrize(
    "method,path,body,token,status,field",
    CASES,
    ids=[f"{c[0]} {c[1][:40]} {c[4]} {c[5]}" for c in CASES],
)
def test_bad_request_is_refused_and_changes_nothing(
    deployed, method, path, body, token, status, field
):
    before = dump(deployed.db)
    resp = send(deployed, method, path, body, token or "tok-orchestrator")
    assert resp.status_code == status, resp.text
    data = resp.json()
    if status >= 400:
        assert set(data) == {"error", "detail", "field"}
        assert data["field"] == field, data
        assert data["detail"]
    assert dump(deployed.db) == before


@pytest.mark.parametrize(
    "raw,detail",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("", "needs a JSON body"),
        ('"text"', "must be a JSON object"),
    ],
)
def test_malformed_bodies(deployed, raw, detail):
    before = dump(deployed.db)
    resp = send(deployed, "POST", "/api/net/service/deploy", raw=raw)
    assert resp.status_code == 400 and detail in resp.json()["detail"]
    assert dump(deployed.db) == before


def test_one_megabyte_body_is_refused(deployed):
    before = dump(deployed.db)
    body = deploy_body("bigjob1", app="big", padding="x" * (1024 * 1024))
    resp = send(deployed, "POST", "/api/net/service/deploy", body)
    assert resp.status_code == 413
    assert resp.json()["error"] == "body too large"
    assert dump(deployed.db) == before


def test_unknown_route_and_method_answer_json(deployed):
    resp = send(deployed, "GET", "/api/net/nothing/here/at/all")
    assert resp.status_code == 404 and resp.json()["error"] == "not found"
    resp = send(deployed, "PUT", "/api/net/service/deploy", {})
    assert resp.status_code == 405 and "error" in resp.json()


def test_redeploying_the_same_id_is_idempotent(deployed):
    before = dump(deployed.db)
    again = deployed.orch.post("/api/net/service/deploy", deploy_body(JOB, RR_ip="10.30.0.9"))
    assert again["service_ip_list"][0]["Address"] == "10.30.0.9"
    assert len(again["instance_list"]) == 2
    same = deployed.orch.post(
        "/api/net/instance/deploy", {"_id": JOB, "instance_number": 0, "cluster_id": "c1"}
    )
    assert same["instance_list"][0]["instance_ip"] == "10.30.0.2"
    assert dump(deployed.db) == before


def test_two_apps_with_the_same_service_name_stay_separate(root):
    a = root.orch.post("/api/net/service/deploy", deploy_body("job1", app="shop", svc="api"))
    b = root.orch.post("/api/net/service/deploy", deploy_body("job2", app="blog", svc="api"))
    assert a["job_name"] == "shop.default.api.default"
    assert b["job_name"] == "blog.default.api.default"
    assert a["service_ip_list"] != b["service_ip_list"]
    assert root.c1.get("/api/net/service/blog_default_api_default/instances")["_id"] == "job2"


def test_pool_exhaustion_is_clear_and_release_reuses(tmp_path):
    from tests.control.conftest import RootServer, root_config

    cfg = root_config(tmp_path / "tiny.db")
    cfg.pools.service_v4 = "10.30.0.0/29"  # six addresses: three services with RR + Closest
    server = RootServer(cfg)
    try:
        for n in range(3):
            server.orch.post("/api/net/service/deploy", deploy_body(f"job{n}", app=f"a{n}"))
        before = dump(server.db)
        resp = send(server, "POST", "/api/net/service/deploy", deploy_body("job3", app="a3"))
        assert resp.status_code == 409
        assert resp.json()["error"] == "address pool exhausted"
        assert "no free address left in pool service_v4 (10.30.0.0/29)" in resp.json()["detail"]
        assert dump(server.db) == before
        freed = server.orch.post("/api/net/service/deploy", deploy_body("job1", app="a1"))
        server.orch.delete("/api/net/service/job1")
        again = server.orch.post("/api/net/service/deploy", deploy_body("job3", app="a3"))
        assert again["service_ip_list"] == [
            {
                **freed["service_ip_list"][0],
                "Address_v6": again["service_ip_list"][0]["Address_v6"],
            },
            {
                **freed["service_ip_list"][1],
                "Address_v6": again["service_ip_list"][1]["Address_v6"],
            },
        ]
    finally:
        server.stop()


def test_tokens_never_reach_the_log(deployed, caplog):
    caplog.set_level(logging.DEBUG)
    deployed.c1.get("/api/net/service/shop_default_web_default/instances")
    send(deployed, "GET", "/api/net/services", token="tok-wrong-secret")
    send(deployed, "POST", "/api/net/service/deploy", deploy_body("j9", app="x"))
    text = caplog.text
    assert "GET" in text or "POST" in text
    for token in ("tok-c1", "tok-wrong-secret", "tok-orchestrator"):
        assert token not in text
