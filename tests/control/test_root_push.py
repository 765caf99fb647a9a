"""Reference cluster managers get oakestra-net's job updates pushed (when enabled)."""

import socket
import threading
import time

import pytest
from flask import Flask, jsonify, request

from oaknet.config import ServerConfig
from oaknet.serving import ServerThread
from tests.control.conftest import RootServer, deploy_body, root_config

pytestmark = pytest.mark.control

JOB = "64b7f0c2a1b2c3d4e5f60718"


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_job_updates_are_pushed_to_interested_clusters(tmp_path):
    received = []
    got = threading.Event()
    receiver = Flask("reference-cluster")

    @receiver.post("/api/net/job/update")
    def job_update():
        received.append((request.headers.get("Authorization"), request.get_json()))
        got.set()
        return jsonify(ok=True)

    srv = ServerThread(receiver, ServerConfig(host="127.0.0.1", port=0, threads=4)).start()
    cfg = root_config(tmp_path / "root.db")
    cfg.push.enabled = True
    cfg.push.token = "tok-towards-clusters"
    cfg.push.retries = 0
    cfg.push.timeout = 1
    root = RootServer(cfg)
    try:
        root.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c1", "cluster_address": "127.0.0.1", "cluster_port": srv.port},
        )
        root.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c2", "cluster_address": "127.0.0.1", "cluster_port": free_port()},
        )
        root.orch.post(
            "/api/net/cluster",
            {"cluster_id": "c3", "cluster_address": "127.0.0.1", "cluster_port": srv.port},
        )
        root.orch.post("/api/net/service/deploy", deploy_body(JOB))
        root.orch.post(
            "/api/net/instance/deploy", {"_id": JOB, "instance_number": 0, "cluster_id": "c1"}
        )
        for client in (root.c1, root.c2):  # c3 is not interested
            client.get("/api/net/service/shop_default_web_default/instances")
        root.c1.post(
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
        assert got.wait(5)
        got.clear()
        root.orch.delete(f"/api/net/{JOB}/0")
        assert got.wait(5)
        deadline = time.monotonic() + 5
        while root.state.clusters.get("c2")["status"] != "ERROR":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert received == [
            (
                "Bearer tok-towards-clusters",
                {
                    "job_name": "shop.default.web.default",
                    "instance_number": 0,
                    "type": "DEPLOYMENT",
                },
            ),
            (
                "Bearer tok-towards-clusters",
                {
                    "job_name": "shop.default.web.default",
                    "instance_number": 0,
                    "type": "UNDEPLOYMENT",
                },
            ),
        ]
        assert root.state.clusters.get("c1")["status"] == "ACTIVE"
    finally:
        root.stop()
        srv.stop()
