"""Node-scale benchmark: one worker's agent programs 10k services, then one-instance updates.

One testbed worker (own ovsdb-server/ovs-vswitchd, userspace datapath) runs the real agent
(``python -m sdn``) in offline mode on a JSON Lines table file (one service per line, the form
an operator generating a big table would use), with two peers (tunnels to 192.0.2.2 and
.3; nothing answers there, which changes nothing for programming) and a few local containers.
Every service has 3 instances: on the two peers, and for the first few services the third one
on this node (attached), otherwise on a peer; even services are round-robin, odd ones closest.

Metrics (times in seconds unless the name says otherwise):
- ``update_ms_100`` / ``update_ms_10k``: median time from the table file's replacement until
  the switch holds one more instance of one service (ovs-vswitchd reports the route to it as
  added, ``ovs-ofctl monitor``; its bucket is then checked in the group), at 100 and at 10k
  services; ``update_cost_ratio_10k_vs_100`` is their ratio;
  ``update_apply_ms_*`` and ``update_apply_ratio_10k_vs_100`` the same from the agent's log
  line saying it computed the change (after it re-read the file) until the switch has it;
- ``update_ms_10k_json``: ``update_ms_10k`` with the same table as one JSON document (the
  agent restarted on it), which the agent decodes whole on every change;
- ``program_10k_s``: from the replacement of a 100-service table by the 10k-service one until
  ovs-ofctl counts every flow the agent wants and one group per service IP;
- ``program_10k_agent_cpu_s`` / ``program_10k_vswitchd_cpu_s``: CPU time of either process
  during that interval (``program_10k_vswitchd_share`` = vswitchd / (agent + vswitchd));
- ``program_10k_compute_s``: CPU time of the pure pipeline logic for the whole table in this
  process, ``program_10k_encode_s`` of the wire encoding of its result, ``table_parse_10k_s``
  of the whole table's parse (the agent's first read);
- ``table_change_10k_ms`` / ``table_change_10k_json_ms``: CPU time in this process of one
  re-read of the table file (``sdn.table.TableFile.changed``) after one service changed, JSON
  Lines / JSON;
- ``agent_rss_mb_10k``: the agent's resident memory after programming (from /proc);
  ``agent_rss_mb_10k_json`` the same after the updates of the JSON file;
- ``cpu_share``: the share of one core a busy loop got just before the program (1.0 on an
  idle machine): wall times scale with it, CPU times do not;
- ``restart_10k_s``: agent restart on a programmed switch, from process start to reconciled
  (includes ovs-vswitchd's reconnection back-off); ``restart_reconcile_10k_s`` the reconcile
  itself as the agent logs it (dump, diff, nothing to send).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable

import testbed as tb_lib
import yaml
from testbed.agents import NodeAgent

from bench.scale_tools import (
    FlowWatch,
    Ofctl,
    computed_at,
    cpu_seconds,
    cpu_share,
    reconcile_time,
    rss_mb,
)

GROUP = "scale"

ME, PEER_A, PEER_B = "192.0.2.1", "192.0.2.2", "192.0.2.3"
SERVICE_BASE = int(ipaddress.IPv4Address("10.30.0.1"))
INSTANCE_BASE = int(ipaddress.IPv4Address("10.30.64.0"))
ADDED_BASE = int(ipaddress.IPv4Address("10.30.240.0"))
GROUP_ID_MASK = 0x7FFFFFFF  # IPv4 service IPs map to group ids by their low 31 bits
SMALL = 100
TIMEOUT_S = 180.0


def run(smoke: bool, say: Callable[[str], None]) -> dict[str, float]:
    """Build the testbed, measure, tear everything down; metric name -> value."""
    size = 500 if smoke else 10_000
    local = 2 if smoke else 8
    repeat = 1 if smoke else 7
    services = make_table(size, local)
    out = offline_costs(services, say)
    prefix = "oksc" + secrets.token_hex(3)  # "oksc": the scale benchmark's testbeds
    with tb_lib.Testbed(prefix) as tb:
        out.update(_on_testbed(tb, services, local, repeat, say))
    out["scale_services"] = float(size)
    out["load_avg_1m"] = os.getloadavg()[0]
    return out


# ---------------------------------------------------------------------------------------------
# The table


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def make_table(size: int, local: int) -> list[dict]:
    """``size`` services as the table file holds them (the first ``local`` have an instance on
    this node)."""
    services = []
    for i in range(size):
        third = ME if i < local else (PEER_A if i % 2 else PEER_B)
        instances = [
            {"number": k, "instance_ip": _ip(INSTANCE_BASE + 3 * i + k), "node_ip": node}
            for k, node in enumerate((PEER_A, PEER_B, third))
        ]
        policy = "round-robin" if i % 2 == 0 else "closest"
        services.append(
            {
                "name": f"bench.ns.s{i}.ns",
                "service_ips": [{"policy": policy, "ipv4": _ip(SERVICE_BASE + i)}],
                "instances": instances,
            }
        )
    return services


def offline_costs(services: list[dict], say: Callable[[str], None]) -> dict[str, float]:
    """Parse, pure logic and wire encoding of the whole table, in this process."""
    from sdn import ofwire
    from sdn.logic import NodeContext, Peer, Pipeline
    from sdn.table import parse_table

    # CPU time, not wall time: the figures should not depend on what else the machine runs.
    text = json.dumps(services)
    started = time.process_time()
    table = parse_table(json.loads(text))
    parsed = time.process_time() - started
    pipeline = Pipeline(NodeContext(ME, "10.18.0.0/26", "fc00::/120", "0a:00:00:00:00:01"))
    peers = {PEER_A: Peer(PEER_A, 1), PEER_B: Peer(PEER_B, 2)}
    costs = {PEER_A: 1.0, PEER_B: 2.0}
    started = time.process_time()
    flows, groups = [], []
    for svc in table.values():
        f, g = pipeline.service_flows(svc, {}, peers, costs)
        flows += f
        groups += g
    computed = time.process_time() - started
    started = time.process_time()
    msgs = [ofwire.group_mod(g) for g in groups] + [ofwire.flow_add(f) for f in flows]
    ofwire.bundle(1, msgs, 1)
    encoded = time.process_time() - started
    changes = {
        f"table_change_10k{tag}_ms": table_change_ms(services, suffix) * 1000
        for tag, suffix in (("", ".jsonl"), ("_json", ".json"))
    }
    say(
        f"scale: {len(table)} services -> {len(flows)} flows, {len(groups)} groups; parse "
        f"{parsed:.2f}s, logic {computed:.2f}s, encode {encoded:.2f}s; one change re-read "
        f"{changes['table_change_10k_ms']:.1f} ms (.jsonl), "
        f"{changes['table_change_10k_json_ms']:.1f} ms (.json) (CPU, in-process)"
    )
    return {
        "program_10k_compute_s": computed,
        "program_10k_encode_s": encoded,
        "table_parse_10k_s": parsed,
        **changes,
    }


def table_change_ms(services: list[dict], suffix: str, repeat: int = 5) -> float:
    """Median CPU seconds of one ``TableFile.changed()`` after one service changed."""
    from sdn.table import TableFile

    services = json.loads(json.dumps(services))  # the caller's table stays as it is
    times = []
    with tempfile.TemporaryDirectory(prefix="oaknet-scale-") as tmp:
        path = os.path.join(tmp, "table" + suffix)
        write_file(path, services)
        watched = TableFile(path)
        watched.read()
        for n in range(repeat):
            svc = services[2 * n]
            svc["instances"].append({"number": 90 + n, "instance_ip": _ip(ADDED_BASE + 200 + n)})
            write_file(path, services)
            started = time.process_time()
            if watched.changed() is None:
                raise RuntimeError(f"{path}: the change was not seen")
            times.append(time.process_time() - started)
    return statistics.median(times)


def write_file(path: str, services: list[dict]) -> float:
    """Replace the table file atomically (JSON Lines for ``.jsonl``, else JSON); return the
    monotonic time of the replacement."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            handle.writelines(json.dumps(svc) + "\n" for svc in services)
        else:
            json.dump(services, handle)
    stamp = time.monotonic()
    os.replace(tmp, path)
    return stamp


# ---------------------------------------------------------------------------------------------
# The testbed part


def _on_testbed(tb, services: list[dict], local: int, repeat: int, say) -> dict[str, float]:
    worker = tb.add_worker("w1", ME)
    path = os.path.join(tb.base_dir, "table.jsonl")
    write_file(path, services[:SMALL])
    agent = NodeAgent(
        tb,
        worker,
        1,
        [PEER_A, PEER_B],
        path,
        extra={"table_poll_s": 0.02, "rtt_interval_s": 5.0},
    )
    agent.start()
    for i in range(local):
        container = tb.add_container(worker, f"c{i}")
        agent.attach(container, services[i]["name"], 2)
    switch = Ofctl(worker)
    return _measure(agent, worker, switch, path, services, local, repeat, say)


def _measure(agent, worker, switch, path, services, local, repeat, say) -> dict:
    """Updates at 100 services, the 10k program, updates at 10k, RSS, restart."""
    out: dict[str, float] = {}
    # Flow reports only while updates are timed: 70k of them would load the programming.
    with FlowWatch(worker) as watch:
        small = [
            _update(agent, switch, watch, path, services, SMALL, local + k, k)
            for k in range(repeat)
        ]
    out["update_ms_100"] = statistics.median(u[0] for u in small) * 1000
    out["update_apply_ms_100"] = statistics.median(u[1] for u in small) * 1000
    say(f"scale: update at {SMALL} services: {_ms(small)}")

    vswitchd = worker.ovs.pid("ovs-vswitchd")
    cpu_before = (cpu_seconds(agent.proc.pid), cpu_seconds(vswitchd))
    out["cpu_share"] = cpu_share()
    applied = agent.health()["switch"]["deltas_applied"]
    started = write_file(path, services)
    want = _wait_program(agent, switch, len(services), started, applied)
    out["program_10k_s"] = time.monotonic() - started
    agent_cpu = cpu_seconds(agent.proc.pid) - cpu_before[0]
    switch_cpu = cpu_seconds(vswitchd) - cpu_before[1]
    out["program_10k_agent_cpu_s"] = agent_cpu
    out["program_10k_vswitchd_cpu_s"] = switch_cpu
    out["program_10k_vswitchd_share"] = switch_cpu / max(agent_cpu + switch_cpu, 1e-9)
    groups = switch.group_count()
    if groups != want["desired_groups"] or groups < len(services):
        raise RuntimeError(f"switch holds {groups} groups, agent wants {want['desired_groups']}")
    out["program_10k_flows"] = float(want["desired_flows"])
    out["program_10k_groups"] = float(groups)
    say(
        f"scale: programmed {len(services)} services ({want['desired_flows']} flows, {groups} "
        f"groups) in {out['program_10k_s']:.2f}s; CPU agent {agent_cpu:.2f}s, "
        f"ovs-vswitchd {switch_cpu:.2f}s"
    )

    with FlowWatch(worker) as watch:
        big = [
            _update(agent, switch, watch, path, services, len(services), SMALL + k, repeat + k)
            for k in range(repeat)
        ]
    out["update_ms_10k"] = statistics.median(u[0] for u in big) * 1000
    out["update_apply_ms_10k"] = statistics.median(u[1] for u in big) * 1000
    out["update_cost_ratio_10k_vs_100"] = out["update_ms_10k"] / out["update_ms_100"]
    out["update_apply_ratio_10k_vs_100"] = out["update_apply_ms_10k"] / out["update_apply_ms_100"]
    say(f"scale: update at {len(services)} services: {_ms(big)}")
    out["agent_rss_mb_10k"] = rss_mb(agent.proc.pid)
    out["vswitchd_rss_mb_10k"] = rss_mb(vswitchd)

    before = switch.flow_count()
    agent.stop()
    started = time.monotonic()
    agent.start(wait=False)
    health = agent.wait_reconciled(timeout=TIMEOUT_S)
    out["restart_10k_s"] = time.monotonic() - started
    out["restart_reconcile_10k_s"] = reconcile_time(agent.log_path)
    if not switch.flow_count() == before == health["desired_flows"]:
        raise RuntimeError(f"restart: {before} flows before, {health} after")
    say(
        f"scale: agent RSS {out['agent_rss_mb_10k']:.0f} MB, restart on a programmed switch "
        f"{out['restart_10k_s']:.2f}s"
    )

    # The same updates on the same table as one JSON document.
    path = os.path.splitext(path)[0] + ".json"
    write_file(path, services)
    agent.stop()
    agent.config["service_table"] = path
    with open(agent.config_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(agent.config, handle)
    agent.start(wait=False)
    agent.wait_reconciled(timeout=TIMEOUT_S)
    with FlowWatch(worker) as watch:
        json_runs = [
            _update(agent, switch, watch, path, services, len(services), 2 * SMALL + 2 * k, n)
            for k, n in enumerate(range(2 * repeat, 3 * repeat))
        ]
    out["update_ms_10k_json"] = statistics.median(u[0] for u in json_runs) * 1000
    out["agent_rss_mb_10k_json"] = rss_mb(agent.proc.pid)
    say(
        f"scale: update at {len(services)} services, JSON file: {_ms(json_runs)}; agent RSS "
        f"{out['agent_rss_mb_10k_json']:.0f} MB"
    )
    agent.stop()
    return out


def _update(
    agent,
    switch: Ofctl,
    watch: FlowWatch,
    path: str,
    services: list,
    size: int,
    index: int,
    n: int,
) -> tuple[float, float]:
    """Add one instance (on a peer) to round-robin service number ``index`` (made even), write
    the first ``size`` services; seconds until the switch's group has the new bucket, from the
    file's replacement and from the agent's log line of the computed change."""
    index -= index % 2
    svc = services[index]
    addr = _ip(ADDED_BASE + 1 + n)
    number = max(i["number"] for i in svc["instances"]) + 1
    svc["instances"].append({"number": number, "instance_ip": addr, "node_ip": PEER_A})
    gid = int(ipaddress.IPv4Address(svc["service_ips"][0]["ipv4"])) & GROUP_ID_MASK
    time.sleep(0.3)  # let the previous change settle
    started = write_file(path, services[:size])
    wall = time.time() - (time.monotonic() - started)  # the replacement, in log time
    # The change is one bundle: once its route to the new instance is in, so is the bucket.
    done = watch.wait_for(f"nw_dst={addr}", started + 30)
    done_wall = wall + (done - started)
    if f"nat(dst={addr})" not in switch.group(gid):
        raise RuntimeError(f"route to {addr} but no bucket in group {gid:#x}")
    return done - started, done_wall - computed_at(agent.log_path, wall)


def _wait_program(agent, switch: Ofctl, size: int, started: float, applied: int) -> dict:
    """Wait until the agent took the new table, the switch confirmed a change after the
    ``applied`` ones before (its bundle's commit reply), and ovs-ofctl counts all its flows.

    (Counting 70k flows costs ovs-vswitchd ~50 ms each time: only once it says it is done.)
    """
    deadline = started + TIMEOUT_S
    while True:
        health = agent.health()
        if health["services"] == size and health["switch"]["deltas_applied"] > applied:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"agent did not apply the table: {health}")
        time.sleep(0.01)
    while switch.flow_count() != health["desired_flows"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"switch never held {health['desired_flows']} flows")
        time.sleep(0.02)
    return health


def _ms(values: list[tuple[float, float]]) -> str:
    return ", ".join(f"{a * 1000:.0f} ({b * 1000:.0f})" for a, b in values) + " ms (after compute)"
