"""Build a two-node testbed, let the agents program br-int, print one node's flows by table."""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")  # python-ovs imports it
# The imports below need the paths above: the script runs from a checkout, not installed.

import testbed as tb_lib
import yaml
from testbed import procs

from ovs_setup.netns import write_sysctl
from sdn import pipeline as pl
from sdn.config import derive_gateway_mac

LOG = logging.getLogger("dump_pipeline")

WEB = "app.ns.web.ns"
CLI = "app.ns.cli.ns"
IDLE = "app.ns.idle.ns"
NODES = {"w1": "192.0.2.1", "w2": "192.0.2.2"}
SUBNETS = {"w1": ("10.18.0.0/26", "fc00::/120"), "w2": ("10.18.0.64/26", "fc00::100/120")}
# (container, node, service, instance, port mappings): attached in this order.
CONTAINERS = (
    ("c1", "w1", CLI, 0, None),
    ("web0", "w1", WEB, 0, "8080:80"),
    ("web1", "w2", WEB, 1, None),
)
_MAIN_PID = os.getpid()
TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovs-ofctl", "ovs-vsctl")


def service_table() -> list[dict]:
    """The static service table both agents read (the format of ``Service.to_dict``)."""

    def svc(name: str, ips: list[dict], instances: list[tuple]) -> dict:
        keys = ("number", "instance_ip", "instance_ip_v6", "node_ip")
        return {
            "name": name,
            "service_ips": ips,
            "instances": [dict(zip(keys, i)) for i in instances],
        }

    w1, w2 = NODES["w1"], NODES["w2"]
    web_ips = [
        {"policy": "round-robin", "ipv4": "10.30.0.1", "ipv6": "fdff:2000::1"},
        {"policy": "closest", "ipv4": "10.30.0.2"},
    ]
    return [
        svc(WEB, web_ips, [(0, "10.30.0.10", "fdff::10", w1), (1, "10.30.0.11", "fdff::11", w2)]),
        svc(CLI, [], [(0, "10.30.1.1", "fdff::1:1", w1)]),
        svc(IDLE, [{"policy": "round-robin", "ipv4": "10.30.0.5"}], []),
    ]


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Connect to the agent's unix socket instead of TCP."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


@dataclass
class AgentProc:
    """One worker's ``python -m sdn`` with a config file in the testbed's directory."""

    tb: tb_lib.Testbed
    worker: tb_lib.Worker
    peers: list[str]
    table_path: str
    dir: str = ""
    proc: subprocess.Popen | None = None
    attached: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dir = os.path.join(self.tb.base_dir, f"agent-{self.worker.name}")
        os.makedirs(self.dir, exist_ok=True)
        v4, v6 = SUBNETS[self.worker.name]
        self.socket = os.path.join(self.dir, "agent.sock")
        config = {
            "node_name": self.worker.name,
            "node_ip": self.worker.ip4,
            "subnet_v4": v4,
            "subnet_v6": v6,
            "bridge": self.worker.bridge,
            "ovs_db": self.worker.db_url,
            "ovs_run_dir": self.worker.ovs.run_dir,
            "datapath_type": self.worker.ovs.datapath_type,
            "peers": self.peers,
            "service_table": self.table_path,
            "table_poll_s": 0.2,
            "rtt_interval_s": 0.5,
            "socket": self.socket,
            "state_dir": os.path.join(self.dir, "state"),
        }
        self.config_path = os.path.join(self.dir, "agent.yaml")
        with open(self.config_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle)
        self.log_path = os.path.join(self.dir, "agent.log")

    def start(self) -> None:
        """Start the agent in the worker's namespace (background, killed at teardown)."""
        argv = [sys.executable, "-m", "sdn", "--config", self.config_path]
        argv += ["--log-file", self.log_path]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = self.tb.run_in(self.worker, argv, background=True, env=env)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One request to the agent's node API: (status, JSON body)."""
        conn = _UnixHTTP(self.socket)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read()
            return resp.status, (json.loads(text) if text else {})
        finally:
            conn.close()

    def health(self) -> dict | None:
        """The health document, or None while the agent does not answer yet."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"agent {self.worker.name} exited: {self.tail()}")
        try:
            status, body = self.call("GET", "/api/v1/health")
        except OSError:
            return None
        return body if status == 200 else None

    def attach(self, container: tb_lib.Container, service: str, number: int, mappings) -> None:
        """Attach a container through the node API, as a container runtime would."""
        body = {"netns": container.path, "service": service, "instance": number}
        if mappings:
            body["port_mappings"] = mappings
        status, answer = self.call("POST", "/api/v1/containers", body)
        if status != 201:
            raise RuntimeError(f"attach {container.name} on {self.worker.name}: {answer}")
        self.attached.append(answer)
        LOG.info(
            "attached %s as %s instance %d on %s",
            container.name,
            service,
            number,
            self.worker.name,
        )

    def tail(self, lines: int = 20) -> str:
        """The end of the agent's log, for error messages."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2):
    """Poll ``check()`` until it returns something truthy; return that or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


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


def wait_programmed(agents: list[AgentProc], node: AgentProc, timeout: float) -> dict:
    """Wait until every agent is reconciled with its peers up, and ``node``'s switch holds
    exactly the desired flows and groups, unchanged over one more second."""

    def peers_up() -> bool:
        for agent in agents:
            health = agent.health()
            if not health or not health["switch"]["reconciled"]:
                return False
            if not all(
                p["bfd"].get("forwarding") and p["rtt_ms"] is not None for p in health["peers"]
            ):
                return False
        return True

    wait_until("reconciled agents with BFD and RTT to their peers", peers_up, timeout)
    last: dict = {}

    def settled() -> dict | None:
        nonlocal last
        health = node.health() or {}
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


def render(node: AgentProc, snap: dict, ports: dict, phy_ports: dict) -> str:
    """The report: node facts, attached containers, then every table's flows and the groups."""
    worker = node.worker
    v4, v6 = SUBNETS[worker.name]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# br-int of {worker.name}, dumped {stamp} ({_version()}, commit {_commit()})",
        f"# node IP {worker.ip4}, subnets {v4} {v6}, gateway MAC {derive_gateway_mac(v4)}",
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


def build_and_dump(prefix: str, node_name: str, timeout: float) -> str:
    """Build the testbed, wait for the agents, dump ``node_name``'s bridges; tear down."""
    with tb_lib.Testbed(prefix) as tb:
        workers = {w.name: w for w in tb.add_workers(len(NODES))}
        for worker in workers.values():
            # Port mappings: the node's kernel must not answer ARP for the node IP (br-phy's).
            write_sysctl(worker.netns, "net/ipv4/conf/ul0/arp_ignore", "1")
        table_path = os.path.join(tb.base_dir, "table.json")
        with open(table_path, "w", encoding="utf-8") as handle:
            json.dump(service_table(), handle)
        agents = {
            name: AgentProc(tb, w, [p.ip4 for p in workers.values() if p is not w], table_path)
            for name, w in workers.items()
        }
        try:
            for agent in agents.values():
                agent.start()
            for agent in agents.values():
                wait_until(f"agent {agent.worker.name}", agent.health, timeout)
            for cname, node, service, number, mappings in CONTAINERS:
                container = tb.add_container(workers[node], cname)
                agents[node].attach(container, service, number, mappings)
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
        return render(node, snap, ports, phy_ports)


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
    parser.add_argument("--node", choices=sorted(NODES), default="w1", help="node to dump")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per wait")
    parser.add_argument("--verbose", action="store_true", help="debug log, traceback on failure")
    args = parser.parse_args(argv)
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
        text = build_and_dump(prefix, args.node, args.timeout)
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
