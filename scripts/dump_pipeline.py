"""Build a namespace testbed, let the agents program br-int, print one node's flows by table.

Two modes. ``cluster`` (the default): a root and a cluster manager in host ``mgr``, three
workers whose agents register with the cluster, the services deployed at the root, and
traffic from a client that makes w1 resolve two services on demand (one of them on w3, which
then learns a tunnel back to w1 from its BFD). ``offline``: two workers whose agents read one
static service table file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")  # python-ovs imports it
# The imports below need the paths above: the script runs from a checkout, not installed.

import testbed as tb_lib
from testbed import procs
from testbed.agents import NodeAgent, start_agents, start_cluster_agents, wait_until
from testbed.managers import Managers, service_ips

from ovs_setup.netns import write_sysctl
from sdn import pipeline as pl
from sdn.config import derive_gateway_mac

LOG = logging.getLogger("dump_pipeline")

WEB = "app.ns.web.ns"
CLI = "app.ns.cli.ns"
IDLE = "app.ns.idle.ns"
DB = "app.ns.db.ns"
OFFLINE_NODES = {"w1": "192.0.2.1", "w2": "192.0.2.2"}
CLUSTER_NODES = {"w1": "192.0.2.1", "w2": "192.0.2.2", "w3": "192.0.2.3"}
_MAIN_PID = os.getpid()
TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovs-ofctl", "ovs-vsctl")


@dataclass(frozen=True)
class Placement:
    """A container to attach: its namespace name, node, service, instance, port mappings."""

    container: str
    node: str
    service: str
    number: int
    mappings: str | None = None
    server: str | None = None  # an HTTP server answering this name, if any


OFFLINE_CONTAINERS = (
    Placement("c1", "w1", CLI, 0),
    Placement("web0", "w1", WEB, 0, "8080:80"),
    Placement("web1", "w2", WEB, 1),
)
CLUSTER_CONTAINERS = (
    Placement("c1", "w1", CLI, 0),
    Placement("web0", "w1", WEB, 0, "8080:80", "web-0"),
    Placement("web1", "w2", WEB, 1, None, "web-1"),
    Placement("db0", "w3", DB, 0, None, "db-0"),
)
# Deployed at the root in this order (the service and instance IPs follow from it).
CLUSTER_SERVICES = (WEB, CLI, IDLE, DB)
UNKNOWN_ADDRESS = "10.30.250.250"  # inside the service range, owned by nobody


def service_table() -> list[dict]:
    """The static service table of offline mode (the format of ``Service.to_dict``)."""

    def svc(name: str, ips: list[dict], instances: list[tuple]) -> dict:
        keys = ("number", "instance_ip", "instance_ip_v6", "node_ip")
        return {
            "name": name,
            "service_ips": ips,
            "instances": [dict(zip(keys, i)) for i in instances],
        }

    w1, w2 = OFFLINE_NODES["w1"], OFFLINE_NODES["w2"]
    web_ips = [
        {"policy": "round-robin", "ipv4": "10.30.0.1", "ipv6": "fdff:2000::1"},
        {"policy": "closest", "ipv4": "10.30.0.2"},
    ]
    return [
        svc(WEB, web_ips, [(0, "10.30.0.10", "fdff::10", w1), (1, "10.30.0.11", "fdff::11", w2)]),
        svc(CLI, [], [(0, "10.30.1.1", "fdff::1:1", w1)]),
        svc(IDLE, [{"policy": "round-robin", "ipv4": "10.30.0.5"}], []),
    ]


def ofctl(worker: tb_lib.Worker, cmd: str, bridge: str, *args: str) -> list[str]:
    """``ovs-ofctl -O OpenFlow15 CMD <bridge's mgmt socket> ARGS`` in the worker; its lines."""
    argv = ["ovs-ofctl", "-O", "OpenFlow15", cmd, worker.ovs.mgmt_url(bridge), *args]
    proc = procs.run(worker.netns, argv)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout.splitlines()


def snapshot(worker: tb_lib.Worker) -> dict[str, list[str]]:
    """br-int's and br-phy's flows and groups as ovs-ofctl prints them (no counters)."""
    out = {}
    for bridge in (worker.bridge, worker.underlay_bridge):
        flows = ofctl(worker, "dump-flows", bridge, "--no-stats")
        groups = ofctl(worker, "dump-groups", bridge)
        out[f"{bridge} flows"] = [ln.strip() for ln in flows if "actions=" in ln]
        out[f"{bridge} groups"] = [ln.strip() for ln in groups if "group_id=" in ln]
    return out


def wait_programmed(agents: list[NodeAgent], node: NodeAgent, timeout: float) -> dict:
    """Wait until every agent is reconciled with its peers up, and ``node``'s switch holds
    exactly the desired flows and groups, unchanged over one more second."""

    def peers_up() -> bool:
        for agent in agents:
            health = agent.poll_health()
            if not health or not health["switch"]["reconciled"] or not agent.peers_up():
                return False
        return True

    wait_until("reconciled agents with BFD and RTT to their peers", peers_up, timeout, 0.2)
    last: dict = {}

    def settled() -> dict | None:
        nonlocal last
        health = node.poll_health() or {}
        snap = snapshot(node.worker)
        counts = (len(snap["br-int flows"]), len(snap["br-int groups"]))
        wanted = (health.get("desired_flows"), health.get("desired_groups"))
        same = snap == last
        last = snap
        return snap if same and counts == wanted else None

    return wait_until("a settled br-int", settled, timeout, interval=1.0)


def port_names(worker: tb_lib.Worker, bridge: str) -> dict[int, str]:
    """ofport -> port name of a bridge (from ``dump-ports-desc``)."""
    names = {}
    for line in ofctl(worker, "dump-ports-desc", bridge):
        m = re.match(r"^\s*(\d+)\((\S+)\):", line)
        if m:
            names[int(m.group(1))] = m.group(2)
    return names


def _table_of(line: str) -> int:
    m = re.search(r"\btable=(\d+)", line)
    return int(m.group(1)) if m else 0


def _flow_order(line: str) -> tuple[int, str]:
    # Descending priority, then the text after the cookie: the same order on every run (the
    # switch's own dump order is not stable).
    m = re.search(r"\bpriority=(\d+)", line)
    return -(int(m.group(1)) if m else 32768), re.sub(r"^cookie=0x[0-9a-f]+, ", "", line)


def _group_id(line: str) -> int:
    m = re.search(r"\bgroup_id=(\d+)", line)
    return int(m.group(1)) if m else 0


def by_table(flows: list[str]) -> dict[int, list[str]]:
    """Flows per table id, each table's flows by descending priority, then by match."""
    tables: dict[int, list[str]] = {}
    for line in flows:
        tables.setdefault(_table_of(line), []).append(line)
    return {t: sorted(tables[t], key=_flow_order) for t in sorted(tables)}


def _version() -> str:
    proc = subprocess.run(
        ["ovs-vswitchd", "--version"], capture_output=True, text=True, check=False
    )
    return proc.stdout.splitlines()[0] if proc.stdout else "ovs-vswitchd (version unknown)"


def _commit() -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "unknown"


def render(node: NodeAgent, snap: dict, facts: list[str], ports: dict, phy_ports: dict) -> str:
    """The report: node facts, attached containers, then every table's flows and the groups."""
    worker = node.worker
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# br-int of {worker.name}, dumped {stamp} ({_version()}, commit {_commit()})",
        *facts,
        "# br-int ports: " + ", ".join(f"{n}={name}" for n, name in sorted(ports.items())),
        "# br-phy ports: " + ", ".join(f"{n}={name}" for n, name in sorted(phy_ports.items())),
    ]
    for c in node.attached:
        lines.append(
            f"# container {c['service']}#{c['instance']}: port {c['port_name']} "
            f"ofport {c['ofport']} mac {c['mac']} namespace {c['namespace_ip']} "
            f"{c['namespace_ip_v6']} instance IP {c['instance_ip']} {c['instance_ip_v6']}"
            + (f" mappings {c['port_mappings']}" if c["port_mappings"] else "")
        )
    for table_id, flows in by_table(snap["br-int flows"]).items():
        table = pl.TABLE_BY_ID.get(table_id)
        name = table.name if table else "?"
        lines += ["", f"## br-int table {table_id}: {name} ({len(flows)} flows)", *flows]
    groups = sorted(snap["br-int groups"], key=_group_id)
    lines += ["", f"## br-int groups ({len(groups)})", *groups]
    lines += ["", f"## br-phy flows ({len(snap['br-phy flows'])})"]
    lines += [f for fl in by_table(snap["br-phy flows"]).values() for f in fl]
    if snap["br-phy groups"]:
        lines += ["", "## br-phy groups", *snap["br-phy groups"]]
    return "\n".join(lines) + "\n"


def _attach(tb, agents: dict[str, NodeAgent], workers: dict, placements) -> dict:
    """Attach every placement through its node's API (and start its server); by name."""
    containers = {}
    for p in placements:
        container = tb.add_container(workers[p.node], p.container)
        extra = {"port_mappings": p.mappings} if p.mappings else {}
        agents[p.node].attach(container, p.service, p.number, **extra)
        LOG.info("attached %s as %s#%d on %s", p.container, p.service, p.number, p.node)
        if p.server:
            tb.start_http_server(container, p.server)
        containers[p.container] = container
    return containers


def _workers(tb, count: int) -> dict:
    workers = {w.name: w for w in tb.add_workers(count)}
    for worker in workers.values():
        # Port mappings: the node's kernel must not answer ARP for the node IP (br-phy's).
        write_sysctl(worker.netns, "net/ipv4/conf/ul0/arp_ignore", "1")
    return workers


def build_offline(tb) -> tuple[dict[str, NodeAgent], dict[str, list[str]]]:
    """Two workers with offline agents on one table file; the header facts per node."""
    workers = _workers(tb, len(OFFLINE_NODES))
    table_path = os.path.join(tb.base_dir, "table.json")
    with open(table_path, "w", encoding="utf-8") as handle:
        json.dump(service_table(), handle)
    started = start_agents(tb, list(workers.values()), table_path, rtt_interval_s=0.5)
    agents = {a.worker.name: a for a in started}
    _attach(tb, agents, workers, OFFLINE_CONTAINERS)
    facts = {}
    for name, agent in agents.items():
        v4, v6 = agent.config["subnet_v4"], agent.config["subnet_v6"]
        facts[name] = [
            "# offline mode: static service table",
            (
                f"# node IP {agent.worker.ip4}, subnets {v4} {v6}, "
                f"gateway MAC {derive_gateway_mac(v4)}"
            ),
        ]
    return agents, facts


def build_cluster(tb) -> tuple[dict[str, NodeAgent], dict[str, list[str]]]:
    """Managers, three cluster-mode agents, the deployment and on-demand traffic from c1."""
    workers = _workers(tb, len(CLUSTER_NODES))
    mgrs = Managers(tb, list(workers))
    try:
        ips = {}
        for name in CLUSTER_SERVICES:
            ips[name] = service_ips(mgrs.deploy_service(name.split(".")[2], name))
        for p in CLUSTER_CONTAINERS:
            mgrs.deploy_instance(p.service.split(".")[2], p.number, p.node)
        started = start_cluster_agents(
            tb, list(workers.values()), mgrs.cluster_url, mgrs.node_tokens
        )
        agents = {a.worker.name: a for a in started}
        containers = _attach(tb, agents, workers, CLUSTER_CONTAINERS)
        client = containers["c1"].netns
        # w1 knows web and cli (local instances); db and idle it resolves on first use.
        for name, addr in (
            ("web", ips[WEB]["rr"]),
            ("db", ips[DB]["rr"]),
            ("db", ips[DB]["closest"]),
            ("idle", ips[IDLE]["rr"]),
            ("unknown", UNKNOWN_ADDRESS),
        ):
            got = procs.http_get(client, f"http://{addr}/", timeout=5)
            LOG.info("c1 -> %s %s: %s", name, addr, got.get("body") or got.get("error"))
        nodes = mgrs.ns.call(mgrs.cluster_reader.get, "/api/net/nodes")
    finally:
        mgrs.close()
    subnets = {n["node_id"]: n for n in nodes}
    facts = {}
    for name, agent in agents.items():
        node = subnets.get(name, {})
        v4 = f"{node.get('subnet_addr')}/{node.get('subnet_prefix') or 26}"
        v6 = f"{node.get('subnet_addr_v6')}/{node.get('subnet_prefix_v6') or 120}"
        facts[name] = [
            f"# cluster mode: cluster manager {mgrs.cluster_url}, node id {name}",
            (
                f"# node IP {agent.worker.ip4}, subnets {v4} {v6} (from the cluster), "
                f"gateway MAC {derive_gateway_mac(v4)}"
            ),
            "# service IPs: "
            + "; ".join(
                f"{n} rr {i.get('rr')} {i.get('rr6')} closest {i.get('closest')} "
                f"{i.get('closest6')}"
                for n, i in ips.items()
            ),
        ]
    return agents, facts


def build_and_dump(prefix: str, mode: str, node_name: str, timeout: float) -> str:
    """Build the testbed, wait for the agents, dump ``node_name``'s bridges; tear down."""
    with tb_lib.Testbed(prefix) as tb:
        agents: dict[str, NodeAgent] = {}
        try:
            build = build_cluster if mode == "cluster" else build_offline
            agents, facts = build(tb)
            node = agents[node_name]
            snap = wait_programmed(list(agents.values()), node, timeout)
        except BaseException:
            for agent in agents.values():
                LOG.error("agent %s log ends:\n%s", agent.worker.name, agent.tail())
            raise
        LOG.info(
            "%s: %d flows, %d groups on br-int",
            node_name,
            len(snap["br-int flows"]),
            len(snap["br-int groups"]),
        )
        ports = port_names(node.worker, node.worker.bridge)
        phy_ports = port_names(node.worker, node.worker.underlay_bridge)
        return render(node, snap, facts[node_name], ports, phy_ports)


def _raise_on_signal(signum, _frame) -> None:
    # pyroute2 forks short-lived helpers (namespace sockets) and stops them with SIGTERM; they
    # inherit this handler, and raising there would unwind the helper into our own stack (it
    # then ran our teardown, killing the agents under the parent).
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, make the dump, print it (and write it to --out)."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="Run as root. Everything is built in namespaces named okd<6 hex>-* and removed "
        "again, also on failure or SIGINT/SIGTERM.",
    )
    parser.add_argument("--out", help="also write the dump to this file")
    parser.add_argument(
        "--mode",
        choices=("cluster", "offline"),
        default="cluster",
        help="agents following a cluster manager (default) or reading a static table",
    )
    parser.add_argument("--node", choices=sorted(CLUSTER_NODES), default="w1", help="node to dump")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per wait")
    parser.add_argument("--verbose", action="store_true", help="debug log, traceback on failure")
    args = parser.parse_args(argv)
    if args.mode == "offline" and args.node not in OFFLINE_NODES:
        parser.error(f"--node {args.node}: offline mode has {', '.join(OFFLINE_NODES)}")
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        print("dump_pipeline: needs root (network namespaces, OVS)", file=sys.stderr)
        return 2
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"dump_pipeline: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    prefix = "okd" + secrets.token_hex(3)
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGINT, _raise_on_signal)
    LOG.info("testbed prefix %s", prefix)
    try:
        text = build_and_dump(prefix, args.mode, args.node, args.timeout)
    except (KeyboardInterrupt, OSError, RuntimeError, tb_lib.TestbedError) as exc:
        LOG.debug("dump failed", exc_info=True)
        print(f"dump_pipeline: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        # The testbed removes what it made; this also catches a half-built one.
        removed = tb_lib.cleanup(prefix)
        if removed:
            LOG.info("removed leftovers: %s", ", ".join(removed))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
