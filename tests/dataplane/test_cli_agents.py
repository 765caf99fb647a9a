"""``oaknet node status`` and ``oaknet trace`` against real node agents and their OVS.

Two worker nodes in network namespaces (each with its own OVS and agent) and containers with
HTTP servers. The commands' errors without an agent are in tests/control/test_cli_node.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil

import pytest
import testbed as tb_lib
from agent_support import instance, oaknet, service, start_agents, write_table

pytestmark = pytest.mark.dataplane

WEB = "shop.prod.web.default"
CLIENT = "shop.prod.client.default"
EMPTY = "shop.prod.empty.default"


# -- against real agents -------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes():
    """Workers w1 and w2 with agents; c1 (client) and s1 (web#0) on w1, s2 (web#1) on w2."""
    if shutil.which("ovs-vswitchd") is None:
        pytest.skip("Open vSwitch is not installed (run scripts/install.sh)")
    with tb_lib.Testbed("okt" + secrets.token_hex(3)) as tb:
        w1, w2 = tb.add_workers(2)
        table = os.path.join(tb.base_dir, "table.json")
        write_table(
            table,
            [
                service(
                    WEB,
                    rr="10.30.0.1",
                    rr6="fdff:2000::1",
                    closest="10.30.0.2",
                    instances=[
                        instance(0, "10.30.0.11", w1.ip4, "fdff::11"),
                        instance(1, "10.30.0.12", w2.ip4, "fdff::12"),
                    ],
                ),
                service(CLIENT, instances=[instance(0, "10.30.0.21", w1.ip4, "fdff::21")]),
                service(EMPTY, rr="10.30.0.9"),
            ],
        )
        a1, a2 = start_agents(tb, [w1, w2], table)
        c1, s1 = tb.add_container(w1, "c1"), tb.add_container(w1, "s1")
        s2 = tb.add_container(w2, "s2")
        a1.attach(s1, WEB, 0)
        a2.attach(s2, WEB, 1)
        a1.attach(c1, CLIENT, 0)
        tb.start_http_server(s1, "web-0")
        tb.start_http_server(s2, "web-1")
        a1.wait_peers()
        a2.wait_peers()
        yield tb, (a1, a2), c1


def test_status_of_a_node_found_by_its_namespace(nodes):
    _tb, (a1, _), _ = nodes
    out = oaknet("node", "status", "--netns", a1.worker.netns)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "node      w1 (192.0.2.1)\n" in text
    assert f"agent     up, socket {a1.socket}\n" in text
    assert re.search(
        r"^switch    connected \(dpid [0-9a-f]{16}\), reconciled \d+ s ago$", text, re.MULTILINE
    ), text
    version = json.loads(oaknet("version", "--json").stdout)["ovs"]
    assert f"OVS       {version} (run dir {a1.worker.ovs.run_dir}, bridge br-int)" in text
    health = a1.health()
    flows = len(a1.worker.dump_flows())
    groups = len(a1.worker.dump_groups())
    assert f"flows     {health['desired_flows']} desired, {flows} on br-int" in text
    assert f"groups    {health['desired_groups']} desired, {groups} on br-int" in text
    assert health["desired_flows"] == flows and groups == 3
    assert re.search(
        r"^192\.0\.2\.2  1       up, forwarding  \d+\.\d{3} ms$", text, re.MULTILINE
    ), text
    rows = [line.split() for line in text.splitlines() if line.startswith("shop.")]
    assert [r[:2] + r[4:] for r in rows] == [
        [CLIENT, "0", "10.18.0.3,", "fc00::3", "10.30.0.21,", "fdff::21"],
        [WEB, "0", "10.18.0.2,", "fc00::2", "10.30.0.11,", "fdff::11"],
    ]


def test_status_json_by_socket_and_by_config(nodes):
    _, (_, a2), _ = nodes
    for args in (["--socket", a2.socket], ["--config", a2.config_path]):
        out = oaknet("node", "status", "--json", *args)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["health"]["node"] == "w2"
        assert data["ovs"]["run_dir"] == a2.worker.ovs.run_dir
        assert data["ovs"]["flows"] == data["health"]["desired_flows"]
        (peer,) = data["health"]["peers"]
        assert peer["node_ip"] == "192.0.2.1" and peer["bfd"]["forwarding"] is True
        assert [c["service"] for c in data["containers"]] == [WEB]


def test_trace_to_a_service_ip_shows_every_bucket(nodes):
    _tb, (a1, _), _c1 = nodes
    out = oaknet("trace", "--netns", a1.worker.netns, "--from", "10.18.0.3", "--to", "10.30.0.1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    first = text.splitlines()[0]
    assert first == (
        f"trace on br-int ({a1.worker.ovs.run_dir}): tcp 10.18.0.3:40000 -> "
        f"10.30.0.1:80 from {_port(a1, CLIENT)} (container {CLIENT}#0)"
    )
    for step in (
        " 0. [classify] ",
        " 1. [unsnat] ",
        " 2. [undnat] ",
        " 3. [service] ",
        " 4. [snat] ",
        " 5. [routing] ",
    ):
        assert step in text, step
    results = sorted(line for line in text.splitlines() if line.startswith("result"))
    assert results == [
        (
            f"result (bucket 0): out of {_port(a1, WEB)} (container {WEB}#0), "
            "as 10.30.0.21:40000 -> 10.18.0.2:80"
        ),
        (
            "result (bucket 1): into the tunnel to node 192.0.2.2, "
            "as 10.30.0.21:40000 -> 10.30.0.12:80"
        ),
    ]
    # The two buckets share the hash values between them.
    hashes = re.findall(r"^=== bucket \d \(dp_hash ([\d,]+)\)$", text, re.MULTILINE)
    assert sorted(int(h) for part in hashes for h in part.split(",")) == list(range(16))


def test_trace_agrees_with_real_packets(nodes):
    _tb, (a1, _), c1 = nodes
    netns = a1.worker.netns
    # The instance IP of web#1: into the tunnel to w2, and web-1 really answers.
    out = oaknet("trace", "--netns", netns, "--from", f"{CLIENT}#0", "--to", "10.30.0.12")
    assert out.stdout.splitlines()[-1] == (
        "result: into the tunnel to node 192.0.2.2, as 10.30.0.21:40000 -> 10.30.0.12:80"
    )
    assert tb_lib.http_get(c1.netns, "http://10.30.0.12/")["body"] == "web-1"
    # A service without instances: the agent rejects, and a real connect is refused.
    out = oaknet("trace", "--netns", netns, "--from", "10.30.0.21", "--to", "10.30.0.9")
    assert out.stdout.splitlines()[-1] == (
        "result: sent to the node agent: no live instance, "
        "it answers with a TCP reset or ICMP unreachable, "
        "as 10.18.0.3:40000 -> 10.30.0.9:80"
    )
    got = tb_lib.http_get(c1.netns, "http://10.30.0.9/", timeout=3)
    assert got["error"] and "refused" in got["error"].lower(), got
    # Closest from w1: the local instance; hairpin when web#0 calls its own service IP.
    out = oaknet("trace", "--netns", netns, "--from", "10.30.0.21", "--to", "10.30.0.2")
    assert out.stdout.splitlines()[-1].startswith(f"result: out of {_port(a1, WEB)} ")
    out = oaknet(
        "trace", "--netns", netns, "--from", "10.18.0.2", "--to", "10.30.0.2", "--proto", "icmp"
    )
    assert out.stdout.splitlines()[-1] == (
        "result: back out of the port it came in on (hairpin), as 10.30.0.11 -> 10.18.0.2"
    )


def test_trace_from_a_short_service_name(nodes):
    _tb, (a1, _), _ = nodes
    netns = a1.worker.netns
    full = oaknet("trace", "--netns", netns, "--from", f"{CLIENT}#0", "--to", "10.30.0.2")
    assert full.returncode == 0, full.stderr
    # The service part of the name, or a leading part of it, names the same container.
    for short in ("client#0", "shop.prod.client#0"):
        out = oaknet("trace", "--netns", netns, "--from", short, "--to", "10.30.0.2")
        assert (out.returncode, out.stdout) == (0, full.stdout), out.stderr
    out = oaknet("trace", "--netns", netns, "--from", "web#1", "--to", "10.30.0.2")
    assert (out.returncode, out.stderr.strip()) == (
        2,
        "oaknet: --from: no container of web instance 1 here",
    )


def test_trace_udp_over_ipv6_by_config(nodes):
    _, (a1, _), _ = nodes
    out = oaknet(
        "trace",
        "--config",
        a1.config_path,
        "--from",
        "fdff::21",
        "--to",
        "fdff:2000::1",
        "--proto",
        "udp",
        "--dport",
        "9000",
    )
    assert out.returncode == 0, out.stderr
    assert "packet: " in out.stdout and ",udp6,ipv6_src=fc00::3," in out.stdout
    results = sorted(line for line in out.stdout.splitlines() if line.startswith("result"))
    assert results == [
        (
            f"result (bucket 0): out of {_port(a1, WEB)} (container {WEB}#0), "
            "as [fdff::21]:40000 -> [fc00::2]:9000"
        ),
        (
            "result (bucket 1): into the tunnel to node 192.0.2.2, "
            "as [fdff::21]:40000 -> [fdff::12]:9000"
        ),
    ]


def test_trace_with_ovs_alone(nodes, tmp_path):
    _, (_, a2), _ = nodes
    # No agent socket: ports come from OVSDB, the gateway MAC from the responder flows.
    out = oaknet(
        "trace",
        "--run-dir",
        a2.worker.ovs.run_dir,
        "--socket",
        str(tmp_path / "none.sock"),
        "--from",
        _port(a2, WEB),
        "--to",
        "10.30.0.11",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == (
        "result: into the tunnel to node 192.0.2.1, as 10.30.0.12:40000 -> 10.30.0.11:80"
    )
    out = oaknet(
        "trace",
        "--run-dir",
        a2.worker.ovs.run_dir,
        "--socket",
        str(tmp_path / "none.sock"),
        "--from",
        "10.30.0.12",
        "--to",
        "10.30.0.11",
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "oaknet: --from: no local container has the address 10.30.0.12"
    # --full keeps every line of OVS's trace; an IPv4 --from picks the port's IPv6 address.
    out = oaknet(
        "trace",
        "--run-dir",
        a2.worker.ovs.run_dir,
        "--socket",
        str(tmp_path / "none.sock"),
        "--from",
        "10.18.0.66",
        "--to",
        "fdff::11",
        "--full",
    )
    assert out.returncode == 0, out.stderr
    assert "Megaflow: " in out.stdout and "ipv6_src=fc00::102" in out.stdout
    assert out.stdout.splitlines()[-1] == (
        "result: into the tunnel to node 192.0.2.1, as [fdff::12]:40000 -> [fdff::11]:80"
    )


def _port(agent, service_name: str) -> str:
    (c,) = [
        c
        for c in agent.call("GET", "/api/v1/containers")[1]["containers"]
        if c["service"] == service_name
    ]
    return c["port_name"]
