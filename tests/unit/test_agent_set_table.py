"""Agent.set_table: unchanged services (same object or equal) cost nothing, others recompute."""

import dataclasses

import pytest
from test_nodeapi import fake_agent

from oaknet.model import Instance, Service, ServiceIP
from sdn.agent import Agent

pytestmark = pytest.mark.unit


def _svc(i: int, instances: int = 1) -> Service:
    return Service(
        f"t.ns.s{i}.ns",
        service_ips=[ServiceIP("round-robin", f"10.30.0.{i + 1}")],
        instances=[
            Instance(k, f"10.30.64.{10 * i + k}", node_ip="192.0.2.2") for k in range(instances)
        ],
    )


@pytest.fixture
def agent(tmp_path):
    return fake_agent(tmp_path, {s.name: s for s in map(_svc, range(3))}, peers=["192.0.2.2"])


def _groups(agent: Agent) -> set[int]:
    return {g.group_id for g in agent.desired()[1]}


def test_same_or_equal_services_change_nothing(agent):
    table = dict(agent.file_table)
    assert agent.set_table(table) == 0
    copies = {n: dataclasses.replace(s) for n, s in table.items()}
    assert agent.set_table(copies) == 0
    assert not any(agent.sink.deltas)


def test_changed_added_and_removed_services(agent):
    before = _groups(agent)
    table = dict(agent.file_table)
    table["t.ns.s1.ns"] = _svc(1, instances=2)
    assert agent.set_table(table) == 1
    assert agent.file_table["t.ns.s1.ns"] is table["t.ns.s1.ns"]
    assert [len(s.instances) for s in agent.services()] == [1, 2, 1]

    del table["t.ns.s0.ns"]
    table["t.ns.s7.ns"] = _svc(7)
    assert agent.set_table(table) == 2
    assert sorted(agent.file_table) == ["t.ns.s1.ns", "t.ns.s2.ns", "t.ns.s7.ns"]
    groups = _groups(agent)
    assert len(groups) == 3 and len(groups & before) == 2  # s0's group went, s7's came

    # Same size, one name swapped for another: the lost one is found all the same.
    table = {n: s for n, s in agent.file_table.items() if n != "t.ns.s2.ns"}
    table["t.ns.s8.ns"] = _svc(8)
    assert agent.set_table(table) == 2
    assert sorted(agent.file_table) == ["t.ns.s1.ns", "t.ns.s7.ns", "t.ns.s8.ns"]
