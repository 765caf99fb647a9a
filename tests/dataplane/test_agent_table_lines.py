"""An offline agent on a JSON Lines table follows a changed line; a bad line changes nothing."""

import ipaddress
import json
import os
import time

import pytest
from agent_support import NodeAgent, instance, service

pytestmark = pytest.mark.dataplane

PEER = "192.0.2.2"
GROUP = str(int(ipaddress.IPv4Address("10.30.0.1")) & 0x7FFFFFFF)  # s0's group (its service IP)


def _services(extra: bool = False) -> list[dict]:
    """Three services with instances on the peer; the first gets a second one with ``extra``."""
    out = []
    for i in range(3):
        count = 2 if extra and i == 0 else 1
        instances = [instance(k, f"10.30.64.{4 * i + k}", PEER) for k in range(count)]
        out.append(service(f"lines.ns.s{i}.ns", rr=f"10.30.0.{i + 1}", instances=instances))
    return out


def _write(path: str, lines: list) -> None:
    """Replace the table file atomically: dicts as one JSON line each, strings as they are."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    os.replace(tmp, path)


def _wait(predicate, agent, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: {agent.tail()}"
        time.sleep(0.1)


def test_offline_agent_follows_a_jsonl_table(testbed):
    worker = testbed.add_worker("w1", "192.0.2.1")
    path = os.path.join(testbed.base_dir, "table.jsonl")
    _write(path, ["# three services", *_services()])
    agent = NodeAgent(testbed, worker, 1, [PEER], path)
    agent.start()
    assert agent.health()["services"] == 3
    group = GROUP
    assert "nat(dst=10.30.64.0)" in worker.ofctl("dump-groups", group)
    assert "nat(dst=10.30.64.1)" not in worker.ofctl("dump-groups", group)

    # One line changes: the first service's group gets the new instance's bucket.
    _write(path, ["# three services", *_services(extra=True)])
    _wait(lambda: "nat(dst=10.30.64.1)" in worker.ofctl("dump-groups", group), agent, "new bucket")
    flows = sorted(worker.dump_flows())

    # A bad line: the agent says which and keeps the last good table.
    _write(path, ["# three services", *_services(extra=True), '{"name": "lines.ns.s9.ns",'])
    _wait(lambda: "line 5, column" in agent.tail(), agent, "error naming the line")
    health = agent.health()
    assert health["services"] == 3
    assert "line 5, column" in health["table"]["last_error"], health["table"]
    assert sorted(worker.dump_flows()) == flows

    # Fixed by a new service at the end: it is programmed, the others are unchanged.
    new = service("lines.ns.s9.ns", rr="10.30.0.9", instances=[instance(0, "10.30.64.90", PEER)])
    _write(path, ["# three services", *_services(extra=True), new])
    _wait(lambda: agent.health()["services"] == 4, agent, "fourth service")
    assert agent.health()["table"] == {"path": path, "last_error": None}
    _wait(lambda: worker.dump_flows("table=5,ip,nw_dst=10.30.64.90"), agent, "route to s9")
    assert "nat(dst=10.30.64.1)" in worker.ofctl("dump-groups", group)
