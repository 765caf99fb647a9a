"""One node, one agent, two containers: the service IP, the instance IP and a reject work."""

import json
import os
import subprocess
import time

import pytest
import testbed as tb_lib
from agent_support import instance, service, start_agents, udp_connected, write_table
from testbed.agents import wait_until

pytestmark = pytest.mark.dataplane

WEB = "shop.prod.web.default"
CLIENT = "shop.prod.client.default"
EMPTY = "shop.prod.empty.default"


@pytest.fixture
def node(testbed):
    """Worker w1 with its agent; containers c1 (client) and s1 (server, HTTP) attached."""
    worker = testbed.add_worker("w1", "192.0.2.1", "2001:db8::1")
    table = os.path.join(testbed.base_dir, "table.json")
    write_table(
        table,
        [
            service(
                WEB,
                rr="10.30.0.1",
                rr6="fdff:2000::1",
                instances=[instance(0, "10.30.0.11", worker.ip4, "fdff::11")],
            ),
            service(
                CLIENT,
                instances=[
                    instance(0, "10.30.0.21", worker.ip4, "fdff::21"),
                    instance(1, "10.30.0.22", worker.ip4, "fdff::22"),
                ],
            ),
            service(EMPTY, rr="10.30.0.9"),
        ],
    )
    [agent] = start_agents(testbed, [worker], table, container_check_s=0.5)
    client = testbed.add_container(worker, "c1")
    server = testbed.add_container(worker, "s1")
    answer = agent.attach(server, WEB, 0)
    agent.attach(client, CLIENT, 0)
    testbed.start_http_server(server, "web-0")
    return agent, client, server, answer


def test_service_ip_reaches_the_instance_with_instance_ips_on_both_ends(node):
    agent, client, _, answer = node
    assert os.stat(agent.socket).st_mode & 0o777 == 0o660
    assert answer["namespace_ip"] == "10.18.0.2" and answer["instance_ip"] == "10.30.0.11"

    got = tb_lib.http_get(client.netns, "http://10.30.0.1/info")
    assert got["error"] is None, got
    info = json.loads(got["body"])
    assert info["name"] == "web-0"
    assert got["peer"][0] == "10.30.0.1"  # the client sees the service IP
    assert info["client"][0] == "10.30.0.21"  # the server sees the client's instance IP

    got6 = tb_lib.http_get(client.netns, "http://[fdff:2000::1]/info")
    assert got6["error"] is None, got6
    assert json.loads(got6["body"])["client"][0] == "fdff::21"

    by_ip = tb_lib.http_get(client.netns, "http://10.30.0.11/")
    assert by_ip["body"] == "web-0" and by_ip["peer"][0] == "10.30.0.11"

    # The group as OVS shows it: the selection method property arrived intact.
    groups = agent.worker.dump_groups()
    assert [
        g
        for g in groups
        if "type=select,selection_method=dp_hash," in g and "nat(dst=10.18.0.2)" in g
    ], groups


def test_zero_instances_is_refused_at_once(node, testbed):
    _, client, _, _ = node
    got = tb_lib.http_get(client.netns, "http://10.30.0.9/", timeout=3)
    assert got["error"] and "refused" in got["error"].lower(), got
    assert got["elapsed"] < 0.5
    udp = udp_connected(testbed, client.netns, "10.30.0.9", 53)
    assert udp["answers"] == ["ConnectionRefusedError"], udp
    # An address of the semantic range that no service has: refused too.
    unknown = tb_lib.http_get(client.netns, "http://10.30.200.7/", timeout=3)
    assert unknown["error"] and "refused" in unknown["error"].lower(), unknown


def test_detach_leaves_nothing_of_the_container(node):
    agent, client, _, answer = node
    agent.detach(WEB, 0)
    flows = "\n".join(agent.worker.dump_flows())
    groups = "\n".join(agent.worker.dump_groups())
    for needle in (answer["namespace_ip"], answer["namespace_ip_v6"], answer["port_name"]):
        assert needle not in flows and needle not in groups
    assert f"in_port={answer['ofport']}," not in flows
    # The service now has no instance: refused, not black-holed.
    got = tb_lib.http_get(client.netns, "http://10.30.0.1/", timeout=3)
    assert got["error"] and "refused" in got["error"].lower(), got


def test_bad_input_is_refused_and_leaves_nothing(node, testbed):
    agent = node[0]
    worker = agent.worker
    flows_before = sorted(worker.dump_flows())
    links_before = _links(testbed, worker.netns)
    spare = testbed.add_container(worker, "spare")
    taken = testbed.add_container(worker, "taken")  # has an eth0 of its own already
    testbed.run_in(taken.netns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "eth9"])
    cases = [
        ({"netns": taken.path, "service": CLIENT, "instance": 1}, 409, "ifname_exists"),
        ({"pid": 4194304, "service": CLIENT, "instance": 1}, 404, "unknown_netns"),
        (
            {"netns": "/run/netns/no-such-ns", "service": CLIENT, "instance": 1},
            404,
            "unknown_netns",
        ),
        ({"netns": "/etc/hostname", "service": CLIENT, "instance": 1}, 404, "unknown_netns"),
        # The agent's own namespace (the node's) must never get a container's eth0.
        (
            {"netns": f"/run/netns/{worker.netns}", "service": CLIENT, "instance": 1},
            400,
            "bad_request",
        ),
        (
            {"netns": spare.path, "service": "shop.prod.nothere.default", "instance": 0},
            404,
            "unknown_service",
        ),
        ({"netns": spare.path, "service": WEB, "instance": 7}, 404, "unknown_instance"),
        ({"netns": spare.path, "service": WEB, "instance": 0}, 409, "duplicate_instance"),
        ({"netns": spare.path, "service": WEB, "instance": "0"}, 400, "bad_request"),
        ({"netns": spare.path, "service": WEB}, 400, "bad_request"),
        (
            {"netns": spare.path, "service": WEB, "instance": 0, "port_mappings": "99999"},
            400,
            "bad_request",
        ),
    ]
    for body, status, error in cases:
        got_status, got = agent.call("POST", "/api/v1/containers", body)
        assert (got_status, got.get("error")) == (status, error), (body, got)
        assert got["detail"]
    got_status, got = agent.call("POST", "/container/deploy", raw=b'{"pid": 1,')
    assert got_status == 400 and got["error"] == "malformed_json"

    assert sorted(worker.dump_flows()) == flows_before
    assert _links(testbed, worker.netns) == links_before
    assert _links(testbed, spare.netns) == ["lo"]
    assert len(agent.call("GET", "/api/v1/containers")[1]["containers"]) == 2


def _links(testbed, netns: str) -> list[str]:
    """The interface names in a namespace."""
    out = testbed.run_in(netns, ["ip", "-o", "link", "show"]).stdout
    return sorted(line.split(": ")[1].split("@")[0] for line in out.splitlines())


def test_restarted_switch_is_reprogrammed(node):
    agent, client, _, _ = node
    before = sorted(agent.worker.dump_flows())
    first = agent.health()["switch"]["reconciled_at"]
    agent.worker.ovs.stop()
    agent.worker.ovs.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        switch = agent.health()["switch"]
        if switch["reconciled"] and switch["reconciled_at"] != first:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"agent did not reprogram the restarted switch: {agent.tail()}")
    assert sorted(agent.worker.dump_flows()) == before
    got = tb_lib.http_get(client.netns, "http://10.30.0.1/")
    assert got["body"] == "web-0", got


def test_a_container_whose_namespace_ended_is_detached(node, testbed):
    """The container stopped without a detach: its namespace, and with it the veth, is gone.
    The agent notices and removes its flows and OVS port."""
    agent, client, _, _ = node
    [gone] = [
        c
        for c in agent.call("GET", "/api/v1/containers")[1]["containers"]
        if c["service"] == CLIENT
    ]
    subprocess.run(["ip", "netns", "del", client.netns], check=True)

    def detached() -> bool:
        return [
            c["service"] for c in agent.call("GET", "/api/v1/containers")[1]["containers"]
        ] == [WEB]

    wait_until("the agent to detach the ended container", detached, timeout=10)
    assert gone["port_name"] not in agent.worker.ofctl("show")
    assert not [f for f in agent.worker.dump_flows() if gone["namespace_ip"] + "," in f]
    # The instance can start again in a new container, and reaches the untouched server.
    again = testbed.add_container(agent.worker, "c2")
    agent.attach(again, CLIENT, 0)
    got = tb_lib.http_get(again.netns, "http://10.30.0.1/info")
    assert got["error"] is None and json.loads(got["body"])["name"] == "web-0", got
