"""Bad input to the cluster manager gets a clear 4xx naming the field; its store is unchanged."""

import json

import pytest
import requests

from tests.control.conftest import RootServer, root_config
from tests.control.test_cluster_support import (
    ClusterServer,
    cluster_config,
    deploy_instance,
    deploy_service,
    dump_all,
    wait_until,
)

pytestmark = pytest.mark.control

NAME = "shop.default.web.default"
P = "shop_default_web_default"
BIG = json.dumps({"job_name": NAME, "pad": "x" * (1 << 20)})
REPORT = {"appname": NAME, "instance_number": 0, "nsip": "10.18.0.2", "nsipv6": "fc00::2"}


def report(**changes):
    body = dict(REPORT)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


ORCH, A1, A2, A3 = "tok-cm-orch", "tok-a1", "tok-a2", "tok-a3"
CASES = [
    # (method, path, body or raw text, token, status, field)
    ("POST", "/api/net/deployment", {}, ORCH, 400, "job_name"),
    ("POST", "/api/net/deployment", {"job_name": 7}, ORCH, 400, "job_name"),
    ("POST", "/api/net/deployment", {"job_name": "a.b.c"}, ORCH, 400, "job_name"),
    ("POST", "/api/net/deployment", {"job_name": "no.such.service.x"}, ORCH, 404, "job_name"),
    ("POST", "/api/net/deployment", "not json", ORCH, 400, None),
    ("POST", "/api/net/deployment", "[1, 2]", ORCH, 400, None),
    ("POST", "/api/net/deployment", BIG, ORCH, 413, None),
    ("DELETE", "/api/net/deployment/a_b", None, ORCH, 400, "job_name"),
    ("DELETE", "/api/net/deployment/x_y_z_w", None, ORCH, 404, "job_name"),
    (
        "POST",
        "/api/net/job/update",
        {"instance_number": 0, "type": "DEPLOYMENT"},
        ORCH,
        400,
        "job_name",
    ),
    (
        "POST",
        "/api/net/job/update",
        {"job_name": NAME, "type": "DEPLOYMENT"},
        ORCH,
        400,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/job/update",
        {"job_name": NAME, "instance_number": -2, "type": "DEPLOYMENT"},
        ORCH,
        400,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/job/update",
        {"job_name": NAME, "instance_number": "one", "type": "DEPLOYMENT"},
        ORCH,
        400,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/job/update",
        {"job_name": NAME, "instance_number": True, "type": "DEPLOYMENT"},
        ORCH,
        400,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/job/update",
        {"job_name": NAME, "instance_number": 0, "type": "DEPLOY"},
        ORCH,
        400,
        "type",
    ),
    ("POST", "/api/net/job/update", {"job_name": NAME, "instance_number": 0}, ORCH, 400, "type"),
    ("POST", "/api/net/node/register", {"host_ip": "nope"}, A2, 400, "host_ip"),
    ("POST", "/api/net/node/register", {"host_ip": 5}, A2, 400, "host_ip"),
    ("POST", "/api/net/node/register", {"host_port": 70000}, A2, 400, "host_port"),
    ("DELETE", "/api/net/node/register", None, A3, 404, "node_id"),
    ("GET", "/api/net/node/service/a_b/instances", None, A2, 400, "service_name"),
    ("GET", "/api/net/node/service/no_such_service_x/instances", None, A2, 404, "job_name"),
    ("GET", f"/api/net/node/service/{P}/instances", None, A3, 404, "node_id"),
    ("GET", "/api/net/node/service/ip/10_30_0_999/instances", None, A2, 400, "service_ip"),
    ("GET", "/api/net/node/service/ip/10_30_9_9/instances", None, A2, 404, "service_ip"),
    ("POST", "/api/net/node/service/deployed", {}, A1, 400, "job_name"),
    ("POST", "/api/net/node/service/deployed", report(appname="a.b"), A1, 400, "appname"),
    (
        "POST",
        "/api/net/node/service/deployed",
        report(instance_number=-1),
        A1,
        400,
        "instance_number",
    ),
    ("POST", "/api/net/node/service/deployed", report(nsip="300.1.1.1"), A1, 400, "nsip"),
    ("POST", "/api/net/node/service/deployed", report(nsip="fc00::5"), A1, 400, "nsip"),
    ("POST", "/api/net/node/service/deployed", report(nsipv6="10.18.0.5"), A1, 400, "nsipv6"),
    ("POST", "/api/net/node/service/deployed", report(nsip=None, nsipv6=None), A1, 400, "nsip"),
    ("POST", "/api/net/node/service/deployed", report(status="FAILED"), A1, 400, "status"),
    ("POST", "/api/net/node/service/deployed", report(host_port="abc"), A1, 400, "host_port"),
    (
        "POST",
        "/api/net/node/service/deployed",
        report(instance_number=9),
        A1,
        404,
        "instance_number",
    ),
    ("POST", "/api/net/node/service/deployed", report(), A3, 404, "node_id"),
    ("POST", "/api/net/node/service/deployed", BIG, A1, 413, None),
    (
        "POST",
        "/api/net/node/service/undeployed",
        {"appname": "x.y.z.w", "instance_number": 0},
        A1,
        404,
        "job_name",
    ),
    (
        "POST",
        "/api/net/node/service/undeployed",
        {"appname": NAME, "instance_number": 0},
        A2,
        409,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/node/service/undeployed",
        {"appname": NAME, "instance_number": 5},
        A1,
        404,
        "instance_number",
    ),
    (
        "POST",
        "/api/net/node/service/address-changed",
        {"appname": NAME, "instance_number": 0},
        A1,
        400,
        "host_ip",
    ),
    (
        "POST",
        "/api/net/node/service/address-changed",
        {"appname": NAME, "instance_number": 0, "host_ip": "x"},
        A1,
        400,
        "host_ip",
    ),
    ("DELETE", "/api/net/node/interest/a_b", None, A2, 400, "job_name"),
    ("GET", "/api/net/node/watch?since=-1", None, A2, 400, "since"),
    ("GET", "/api/net/node/watch?since=abc", None, A2, 400, "since"),
    ("GET", "/api/net/node/watch?timeout=abc", None, A2, 400, "timeout"),
    ("GET", "/api/net/nowhere", None, A2, 404, None),
]


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """A service with instance 0 on node a1 (reported running), a2 interested, a3 unknown.

    One set-up serves every case: each case asserts it changed nothing.
    """
    tmp = tmp_path_factory.mktemp("cluster-validation")
    root = RootServer(root_config(tmp / "root.db"))
    c1 = None
    try:
        root.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": 10111},
        )
        c1 = ClusterServer(cluster_config(tmp / "c1.db", "c1", root.url))
        deploy_service(root, "job1", "shop")
        deploy_instance(root, "job1", 0, "c1", "a1", "192.0.2.11")
        a1, a2 = c1.node("a1"), c1.node("a2")
        a1.register("192.0.2.11")
        a2.register("192.0.2.12")
        a2.query(NAME)
        a1.deployed(NAME, 0, "10.18.0.2", "fc00::2", "192.0.2.11")
        wait_until(lambda: c1.synced(root), what="the cluster to follow the root")
        yield c1
    finally:
        if c1 is not None:
            c1.stop()
        root.stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "token", "status", "field"),
    CASES,
    ids=[f"{c[0]} {c[1]} {c[4]} {c[5]}" for c in CASES],
)
def test_bad_input_is_refused_and_changes_nothing(busy, method, path, body, token, status, field):
    before = dump_all(busy.db)
    data = body if isinstance(body, str) else (None if body is None else json.dumps(body))
    resp = requests.request(
        method,
        busy.url + path,
        data=data,
        timeout=10,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert error["error"] and error["detail"]
    assert error["field"] == field, error
    assert dump_all(busy.db) == before
