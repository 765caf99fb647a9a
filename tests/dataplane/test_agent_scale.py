"""A table of 1000 services reaches the switch whole (one bundle of ~1 MB, sent in chunks)."""

import os
import re
import time

import pytest
from agent_support import NodeAgent, instance, service, write_table

pytestmark = pytest.mark.dataplane

COUNT = 1000
PEER = "192.0.2.2"


def _table(extra: int = 0) -> list[dict]:
    """COUNT services, each with 2 instances on the peer; every other one closest."""
    out = []
    for i in range(COUNT):
        base = 0x0A1E4000 + 4 * i  # 10.30.64.0 onwards
        instances = [
            instance(k, f"10.30.{(base + k) >> 8 & 255}.{(base + k) & 255}", PEER)
            for k in range(2 + (extra if i == 0 else 0))
        ]
        sip = f"10.30.{(i + 1) >> 8}.{(i + 1) & 255}"
        policy = {"rr": sip} if i % 2 == 0 else {"closest": sip}
        out.append(service(f"big.ns.s{i}.ns", instances=instances, **policy))
    return out


def test_a_thousand_services_are_programmed_whole_and_updated(testbed):
    worker = testbed.add_worker("w1", "192.0.2.1")
    path = os.path.join(testbed.base_dir, "table.json")
    write_table(path, _table())
    agent = NodeAgent(testbed, worker, 1, [PEER], path)
    agent.start()

    health = agent.health()
    assert health["services"] == COUNT
    aggregate = worker.ofctl("dump-aggregate")
    assert f"flow_count={health['desired_flows']}" in aggregate, aggregate
    groups = worker.dump_groups()
    assert len(groups) == health["desired_groups"] == COUNT
    # A closest group: fast failover, both instances, watching the tunnel port.
    closest = next(g for g in groups if "group_id=169738242," in g)
    assert "type=ff" in closest and closest.count("watch_port:") == 2, closest
    assert "nat(dst=10.30.64.4)" in closest and "nat(dst=10.30.64.5)" in closest

    # One more instance of service 0: its group gets the bucket, its route the flow.
    write_table(path, _table(extra=1))
    deadline = time.monotonic() + 15
    while "nat(dst=10.30.64.2)" not in worker.ofctl("dump-groups", str(0x0A1E0001)):
        assert time.monotonic() < deadline, agent.tail()
        time.sleep(0.1)
    routes = worker.dump_flows("table=5,ip,nw_dst=10.30.64.2")
    assert len(routes) == 1 and re.search(r"output:\d+", routes[0]), routes
    assert f"flow_count={agent.health()['desired_flows']}" in worker.ofctl("dump-aggregate")
