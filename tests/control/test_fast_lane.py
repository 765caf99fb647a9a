"""The server's fast lane answers the hot routes exactly as the Flask app does, and idles."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from oaknet.config import ServerConfig
from oaknet.fastlane import FAST_LANE_ENV, FastLane
from oaknet.serving import ServerThread
from tests.control.conftest import deploy_body


def _get(port: int, path: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        # Date changes by the second and a redirect names the server's own port; everything
        # else must be byte for byte the same.
        kept = {
            k.lower(): v.replace(f":{port}/", ":PORT/")
            for k, v in resp.getheaders()
            if k.lower() != "date"
        }
        return resp.status, kept, body.replace(b":%d/" % port, b":PORT/")
    finally:
        conn.close()


@pytest.fixture
def flask_only(root, monkeypatch):
    """A second server on the root's app with the fast lane turned off."""
    monkeypatch.setenv(FAST_LANE_ENV, "0")
    srv = ServerThread(root.app, ServerConfig(host="127.0.0.1", port=0, threads=8)).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_the_root_serves_its_hot_routes_through_the_fast_lane(root, flask_only):
    assert isinstance(root.srv.wsgi, FastLane)
    assert flask_only.wsgi is root.app


def test_fast_and_flask_answers_are_the_same(root, flask_only):
    root.orch.post("/api/net/service/deploy", deploy_body("j1"))
    root.orch.post(
        "/api/net/instance/deploy", {"_id": "j1", "instance_number": 0, "cluster_id": "c1"}
    )
    name = "/api/net/service/shop_default_web_default/instances"
    root.c1.get(name)  # the first query stores c1's interest; the compared ones only read
    head = root.orch.get("/api/health")["revision"]
    cases = [
        (name, "tok-c1"),
        (name, "tok-orchestrator"),
        (name + "?ignored=1", "tok-c1"),
        (name, None),  # 401 with WWW-Authenticate
        (name, "not-a-token"),
        (name, "tok-reader"),  # 403
        ("/api/net/service/nosuch_default_web_default/instances", "tok-c1"),  # 404
        ("/api/net/service/bad/instances", "tok-c1"),  # 400: not a job name
        ("/api/net/service/x//instances", "tok-c1"),  # not the route: Flask's 404
        ("/api/net/service/shop_default_web_default/instances/", "tok-c1"),
        (f"/api/net/watch?since={head - 1}&timeout=0", "tok-c1"),
        (f"/api/net/watch?since={head - 1}&timeout=0", "tok-orchestrator"),
        (f"/api/net/watch?since={head}&timeout=0", "tok-c1"),  # nothing new: empty answer
        (f"/api/net/watch?since={head + 50}&timeout=0", "tok-c1"),  # resync with services
        ("/api/net/watch?since=-1", "tok-c1"),  # 400
        ("/api/net/watch?since=0&timeout=x", "tok-c1"),  # 400
        ("/api/net/watch?timeout=0", "tok-reader"),  # 403
        ("/api/net/watch/", "tok-c1"),  # not the route
    ]
    for path, token in cases:
        slow = _get(flask_only.port, path, token)
        fast = _get(root.srv.port, path, token)
        assert fast == slow, path
    # A cluster's first query stores its interest: c2's through Flask, c3's through the lane.
    assert _get(root.srv.port, name, "tok-c3") == _get(flask_only.port, name, "tok-c2")
    assert root.state.clusters.is_interested("c3", "shop.default.web.default")
    # The answers carry what a caller needs, not only what Flask would have said.
    status, headers, body = _get(root.srv.port, name, "tok-c1")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert int(headers["x-oaknet-revision"]) == head
    assert json.loads(body)["job_name"] == "shop.default.web.default"
    status, headers, body = _get(root.srv.port, name, None)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="oaknet"'


def test_fast_lane_requests_are_counted_in_metrics(root):
    root.orch.post("/api/net/service/deploy", deploy_body("j1"))
    for _ in range(3):
        root.c1.get("/api/net/service/shop_default_web_default/instances")
    text = _get(root.srv.port, "/metrics", None)[2].decode()
    want = (
        'oaknet_http_requests_total{method="GET",'
        'route="/api/net/service/<service_name>/instances",status="200"} 3'
    )
    assert want in text


def test_a_long_poll_wakes_on_a_change_through_the_fast_lane(root):
    root.orch.post("/api/net/service/deploy", deploy_body("j1"))
    root.c1.get("/api/net/service/shop_default_web_default/instances")
    head = root.orch.get("/api/health")["revision"]
    got: list = []
    poll = threading.Thread(
        target=lambda: got.append(root.c1.get(f"/api/net/watch?since={head}&timeout=20"))
    )
    poll.start()
    deadline = time.monotonic() + 10
    while root.orch.get("/api/health")["watchers"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    root.orch.post(
        "/api/net/instance/deploy", {"_id": "j1", "instance_number": 0, "cluster_id": "c1"}
    )
    poll.join(10)
    assert got and got[0]["changes"], got
    assert got[0]["changes"][0]["subject"] == "shop.default.web.default"


def test_an_idle_server_sleeps(root):
    # The server loop once polled without a timeout: an idle manager used a whole core.
    time.sleep(0.3)
    started = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - started < 0.25


def test_only_queries_that_just_read_run_on_the_server_loop(root):
    root.orch.post("/api/net/service/deploy", deploy_body("j1"))
    lane = root.srv.wsgi
    path = "/api/net/service/shop_default_web_default/instances"

    def inline(token: str | None, where: str = path, method: str = "GET") -> bool:
        return lane.runs_inline(method, where, f"Bearer {token}" if token else None)

    assert not inline("tok-c1")  # c1's first query stores its interest: a worker writes it
    root.c1.get(path)
    assert inline("tok-c1")
    assert inline("tok-orchestrator")  # never stores an interest
    assert not inline("tok-c1", method="HEAD")
    assert not inline(None) and not inline("tok-reader")  # a worker answers with the error
    assert not inline("tok-c1", "/api/net/watch")  # a long poll waits: never on the loop
    root.c1.delete("/api/net/interest/shop_default_web_default")
    assert not inline("tok-c1")
