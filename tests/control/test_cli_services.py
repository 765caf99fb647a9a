"""``oaknet services`` and ``oaknet version`` as a user runs them, against real managers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.control.conftest import REPO
from tests.control.test_cluster_support import (
    c1_fixture,  # noqa: F401  (the c1 fixture)
    deploy_instance,
    deploy_service,
    wait_until,
)

pytestmark = pytest.mark.control

JOB = "64b7f0c2a1b2c3d4e5f60718"
EMPTY_JOB = "64b7f0c2a1b2c3d4e5f60719"
NAME = "shop.default.web.default"


def oaknet(
    *args: str, env: dict | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    """Run the ``oaknet`` command as a user would (a new process, the repo's Python)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OAKNET_")}
    environ.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "oaknet.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        cwd=REPO,
        check=False,
    )


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def table(root):
    """The root holds a placed service with two instances and a service without instances."""
    deploy_service(root, JOB, "shop")
    deploy_instance(root, JOB, 0, "c1", "w1", "192.0.2.1")
    deploy_instance(root, JOB, 1, "c2")
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
                    "worker_id": "w1",
                }
            ],
        },
    )
    root.orch.post(
        "/api/net/service/deploy",
        {
            "_id": EMPTY_JOB,
            "deployment_descriptor": {
                "app_name": "shop",
                "app_ns": "default",
                "service_name": "db",
                "service_ns": "default",
            },
        },
    )
    return root


def test_services_table_shows_service_ips_and_instances(table):
    out = oaknet("services", "--url", table.url, "--token", "tok-orchestrator")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout == EXPECTED_TABLE


EXPECTED_TABLE = """\
SERVICE                   POLICY       SERVICE IPv4  SERVICE IPv6  INSTANCES
shop.default.db.default   round-robin  10.30.0.5     fdff:2000::2  0
                          closest      10.30.0.6     fdff:1000::2
shop.default.web.default  round-robin  10.30.0.1     fdff:2000::1  2
                          closest      10.30.0.2     fdff:1000::1

SERVICE                   #  INSTANCE IPv4  INSTANCE IPv6  NODE  NODE IP    CLUSTER  STATUS
shop.default.web.default  0  10.30.0.3      fdff::1        w1    192.0.2.1  c1       running
shop.default.web.default  1  10.30.0.4      fdff::2        -     -          c2       scheduled
"""


def test_services_json_and_token_from_the_environment(table):
    out = oaknet("services", "--json", env={"OAKNET_URL": table.url, "OAKNET_TOKEN": "tok-reader"})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["manager"], data["url"]) == ("root manager", table.url)
    by_name = {s["name"]: s for s in data["services"]}
    web = by_name[NAME]
    assert web["job_id"] == JOB
    assert web["service_ips"][0] == {
        "policy": "round-robin",
        "ipv4": "10.30.0.1",
        "ipv6": "fdff:2000::1",
    }
    assert web["instances"][0]["namespace_ip"] == "10.18.0.2"
    assert by_name["shop.default.db.default"]["instances"] == []


def test_an_empty_table_is_said_plainly(root):
    out = oaknet("services", "--url", root.url, "--token", "tok-orchestrator")
    assert (out.returncode, out.stdout) == (0, f"no services at root manager {root.url}\n")


def test_a_wrong_token_is_named_as_rejected(table):
    out = oaknet("services", "--url", table.url, "--token", "not-a-token")
    assert out.returncode == 1
    assert out.stdout == ""
    assert (
        out.stderr.strip() == f"oaknet: token rejected by root manager at {table.url}: "
        "invalid token"
    )
    # A valid token without a role that may list services: 403, said the same way.
    out = oaknet("services", "--url", table.url, "--token", "tok-node")
    assert out.returncode == 1
    assert out.stderr.startswith(f"oaknet: token rejected by root manager at {table.url}: ")
    assert "needs role" in out.stderr


def test_an_unreachable_manager_is_named_with_its_url():
    url = f"http://127.0.0.1:{free_port()}"
    out = oaknet("services", "--url", url, "--token", "tok-orchestrator")
    assert out.returncode == 1
    assert out.stderr.strip() == f"oaknet: cannot reach root manager at {url}: Connection refused"


def test_usage_errors_exit_2():
    out = oaknet("services", "--url", "http://127.0.0.1:1")
    assert (out.returncode, out.stderr.strip()) == (
        2,
        "oaknet: no token: give --token or set OAKNET_TOKEN",
    )
    out = oaknet("services", "--url", "ftp://x", "--token", "t")
    assert out.returncode == 2 and "is not an http(s) URL" in out.stderr
    out = oaknet("no-such-command")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    assert oaknet().returncode == 2


def test_a_cluster_manager_lists_what_it_caches(root, c1):
    deploy_service(root, JOB, "shop")
    deploy_instance(root, JOB, 0, "c1", "a1", "192.0.2.11")
    node = c1.node("a1")
    node.register("192.0.2.11")
    node.query(NAME)  # the cluster caches what its nodes ask for
    wait_until(lambda: c1.state.cache.entry(NAME) is not None, what="c1 caches the service")

    out = oaknet("services", "--url", c1.url, "--token", "tok-cm-reader", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["manager"] == "cluster manager"
    (svc,) = data["services"]
    assert svc["name"] == NAME and svc["instances"][0]["node_id"] == "a1"
    assert "deployed" in svc and "interested_nodes" in svc

    out = oaknet("services", "--url", c1.url, "--token", "tok-orchestrator")
    assert out.returncode == 1
    assert (
        out.stderr.strip() == f"oaknet: token rejected by cluster manager at {c1.url}: "
        "invalid token"
    )


def test_version_names_oaknet_python_and_ovs():
    out = oaknet("version")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "oaknet 0.1.0"
    assert lines[1] == f"Python {sys.version.split()[0]}"
    assert lines[2].startswith("Open vSwitch ")
    data = json.loads(oaknet("version", "--json").stdout)
    assert data["oaknet"] == "0.1.0"
    if data["ovs"] is not None:
        assert lines[2] == f"Open vSwitch {data['ovs']}"
