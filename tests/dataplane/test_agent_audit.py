"""The agent's switch audit: drift made behind its back is found, named and repaired; a node
whose only changes come from the agent itself never reports drift."""

import os
import time

import pytest
import testbed as tb_lib
from agent_support import instance, service, start_agents, write_table
from testbed.agents import wait_until

pytestmark = pytest.mark.dataplane

WEB = "shop.prod.web.default"
CLIENT = "shop.prod.client.default"


def _route(worker, ns_ip: str) -> list[str]:
    """The container's plain route (not its hairpin, which also names the input port)."""
    return [
        f
        for f in worker.dump_flows("table=5")
        if "priority=100" in f and f"nw_dst={ns_ip}," in f.replace(" ", ",")
    ]


def test_a_deleted_route_is_put_back_and_named_in_the_log(testbed):
    worker = testbed.add_worker("w1", "192.0.2.1", "2001:db8::1")
    table = os.path.join(testbed.base_dir, "table.json")
    write_table(
        table,
        [
            service(WEB, rr="10.30.0.1", instances=[instance(0, "10.30.0.11", worker.ip4)]),
            service(CLIENT, instances=[instance(0, "10.30.0.21", worker.ip4)]),
        ],
    )
    [agent] = start_agents(testbed, [worker], table, audit_interval_s=1)
    server = testbed.add_container(worker, "s1")
    client = testbed.add_container(worker, "c1")
    ns_ip = agent.attach(server, WEB, 0)["namespace_ip"]
    agent.attach(client, CLIENT, 0)
    testbed.start_http_server(server, "web-0")
    assert tb_lib.http_get(client.netns, "http://10.30.0.1/")["body"] == "web-0"

    # Changes made through the agent (a detach and an attach) are never drift.
    agent.detach(CLIENT, 0)
    agent.attach(client, CLIENT, 0)
    wait_until("a first audit", lambda: agent.health()["switch"]["last_audit"], 10)
    time.sleep(2.5)
    assert agent.health()["switch"]["drift_repairs"] == 0, agent.tail()

    # An operator deletes the container's route by hand (traffic to it would be dropped) ...
    worker.ofctl("del-flows", "--strict", f"table=5,priority=100,ip,nw_dst={ns_ip}")

    # ... the next audit puts it back and names what it repaired.
    wait_until("the repair", lambda: agent.health()["switch"]["drift_repairs"] >= 1, 10)
    assert _route(worker, ns_ip), worker.dump_flows("table=5")
    assert tb_lib.http_get(client.netns, "http://10.30.0.1/")["body"] == "web-0"
    log = agent.tail(200)
    assert "drift found and repaired: 1 flows missing" in log, log
    assert f"nw_dst={ns_ip}" in log.split("drift found", 1)[1], log
