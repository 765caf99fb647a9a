"""``oaknet node status``: a node agent's health from its unix socket, plus its OVS's facts.

Also finds a node's parts (agent socket, agent config, OVS run directory, bridge) from what the
user gives: a socket, an agent config file, a run directory or the node's network namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from oaknet.cli_util import OK, USAGE, CliError, render_table, run_tool, seconds, unix_get

DEFAULT_SOCKET = "/run/oaknet/agent.sock"  # sdn.config.AgentConfig.socket
DEFAULT_RUN_DIR = "/run/openvswitch"  # sdn.config.AgentConfig.ovs_run_dir
DEFAULT_BRIDGE = "br-int"
NETNS_DIR = "/run/netns"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``oaknet node status``."""
    node = sub.add_parser("node", help="a worker node's agent and switch")
    node_sub = node.add_subparsers(metavar="ACTION")
    p = node_sub.add_parser("status", help="agent, switch, tunnels, flows and containers")
    add_target_options(p)
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_node_status)
    node.set_defaults(func=lambda args: _usage(node))


def add_target_options(p: argparse.ArgumentParser) -> None:
    """The options that say which node to look at."""
    p.add_argument(
        "--socket", help=f"the agent's API socket (env OAKNET_SOCKET; default {DEFAULT_SOCKET})"
    )
    p.add_argument("--config", help="the agent's config file (gives socket, OVS and bridge)")
    p.add_argument("--run-dir", help=f"the node's OVS run directory (default {DEFAULT_RUN_DIR})")
    p.add_argument("--bridge", help=f"the integration bridge (default {DEFAULT_BRIDGE})")
    p.add_argument("--netns", help="the node's network namespace: finds its agent and OVS")


@dataclass
class NodeTarget:
    """Where one node's agent and OVS are."""

    socket: str
    run_dir: str
    bridge: str
    config: object | None = None  # sdn.config.AgentConfig when known
    netns: str | None = None

    @property
    def db_url(self) -> str:
        """The node's OVSDB (``ovs_db`` of the agent config, else the run dir's socket)."""
        db = getattr(self.config, "ovs_db", None)
        if db and getattr(self.config, "ovs_run_dir", None) == self.run_dir:
            return db
        return f"unix:{self.run_dir}/db.sock"

    @property
    def mgmt(self) -> str:
        """The ovs-ofctl target of the integration bridge."""
        return f"unix:{self.run_dir}/{self.bridge}.mgmt"

    def vswitchd_ctl(self) -> str:
        """The control socket of the node's ovs-vswitchd, or CliError when it does not run."""
        pidfile = Path(self.run_dir) / "ovs-vswitchd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            raise CliError(
                f"no ovs-vswitchd runs for {self.run_dir} (no pidfile {pidfile}); "
                "give --run-dir, --config or --netns"
            ) from None
        ctl = Path(self.run_dir) / f"ovs-vswitchd.{pid}.ctl"
        if not ctl.exists() or not Path(f"/proc/{pid}").exists():
            raise CliError(f"ovs-vswitchd of {self.run_dir} (pid {pid}) is not running")
        return str(ctl)

    def appctl(self, *args: str) -> str:
        """Run ``ovs-appctl`` against the node's ovs-vswitchd."""
        return run_tool(["ovs-appctl", "-t", self.vswitchd_ctl(), *args])

    def ofctl(self, command: str, *args: str) -> str:
        """Run ``ovs-ofctl -O OpenFlow15 COMMAND <bridge> ARGS``."""
        return run_tool(["ovs-ofctl", "-O", "OpenFlow15", command, self.mgmt, *args])


def resolve_target(args: argparse.Namespace) -> NodeTarget:
    """The node the options name; the agent's config fills in what was not given."""
    config = _load_agent_config(args.config) if args.config else None
    found_run_dir = None
    if args.netns:
        pids = _netns_pids(args.netns)
        found_run_dir = _vswitchd_run_dir(pids)
        if config is None:
            config = _agent_config_of(pids)
    sock = args.socket or os.environ.get("OAKNET_SOCKET")
    if config is None and not args.netns:
        wanted = sock or DEFAULT_SOCKET
        config = _agent_config_of(_all_pids(), socket_path=wanted)
    sock = sock or getattr(config, "socket", None) or DEFAULT_SOCKET
    run_dir = (
        args.run_dir or getattr(config, "ovs_run_dir", None) or found_run_dir or DEFAULT_RUN_DIR
    )
    bridge = args.bridge or getattr(config, "bridge", None) or DEFAULT_BRIDGE
    return NodeTarget(sock, os.path.abspath(run_dir), bridge, config, args.netns)


# -- node status ---------------------------------------------------------------------------


def cmd_node_status(args: argparse.Namespace) -> int:
    """Print the agent's health, the switch's facts, tunnels and local containers."""
    target = resolve_target(args)
    health = agent_get(target.socket, "/api/v1/health", args.timeout)
    containers = agent_get(target.socket, "/api/v1/containers", args.timeout)
    ovs = switch_facts(target)
    status = {
        "agent": {"socket": target.socket, "up": True},
        "health": health,
        "containers": containers.get("containers", []) if isinstance(containers, dict) else [],
        "ovs": ovs,
    }
    switch = health.get("switch") or {}
    healthy = bool(switch.get("connected") and switch.get("reconciled"))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return OK if healthy else 1


def agent_get(sock: str, path: str, timeout: float) -> dict:
    """GET ``path`` from the agent API on ``sock``; CliError saying why it is not reachable."""
    try:
        status, body = unix_get(sock, path, timeout)
    except FileNotFoundError:
        raise CliError(
            f"no agent socket at {sock} (is the agent running? give --socket, --config or --netns)"
        ) from None
    except ConnectionRefusedError:
        raise CliError(
            f"agent socket {sock} refuses connections (the agent is not running)"
        ) from None
    except PermissionError:
        raise CliError(
            f"no permission to open {sock} (run as root or in the agent's group)"
        ) from None
    except TimeoutError:
        raise CliError(f"the agent at {sock} did not answer in {timeout:g} s") from None
    except OSError as exc:
        raise CliError(f"cannot talk to the agent at {sock}: {exc}") from None
    except ValueError:
        raise CliError(f"{sock} is not an oaknet agent (answer to {path} is not JSON)") from None
    if status != 200 or not isinstance(body, dict):
        detail = body.get("detail") if isinstance(body, dict) else body
        raise CliError(f"the agent at {sock} answered {status} to {path}: {detail}")
    return body


def switch_facts(target: NodeTarget) -> dict:
    """OVS version and the flows/groups really on the bridge; None for what is unreachable."""
    facts: dict = {
        "run_dir": target.run_dir,
        "bridge": target.bridge,
        "version": None,
        "flows": None,
        "groups": None,
        "error": None,
    }
    try:
        text = target.appctl("version")
        match = re.search(r"\(Open vSwitch\)\s+(\S+)", text)
        facts["version"] = match.group(1) if match else text.strip()
        agg = target.ofctl("dump-aggregate")
        match = re.search(r"flow_count=(\d+)", agg)
        facts["flows"] = int(match.group(1)) if match else None
        groups = target.ofctl("dump-groups")
        facts["groups"] = sum(1 for line in groups.splitlines() if "group_id=" in line)
    except CliError as exc:
        facts["error"] = exc.message
    return facts


def format_status(status: dict) -> str:
    """The human-readable node status."""
    h, ovs = status["health"], status["ovs"]
    sw = h.get("switch") or {}
    lines = [
        f"node      {h.get('node')} ({h.get('node_ip')})",
        f"agent     up, socket {status['agent']['socket']}",
    ]
    if sw.get("connected"):
        state = f"connected (dpid {sw.get('dpid')})"
        if sw.get("reconciled"):
            state += f", reconciled {_ago(sw.get('reconciled_at'))}"
        else:
            state += ", not reconciled yet"
    else:
        state = "NOT connected"
    if sw.get("last_error"):
        state += f", last error: {sw['last_error']}"
    lines.append(f"switch    {state}")
    cluster = h.get("cluster")
    if cluster:
        link = "connected" if cluster.get("connected") else "NOT connected"
        link += f" to {cluster.get('url')} as {cluster.get('node_id')}"
        link += f", revision {cluster.get('revision')}"
        if cluster.get("pending_reports"):
            link += f", {cluster['pending_reports']} reports waiting"
        if not cluster.get("connected") and cluster.get("last_error"):
            link += f", last error: {cluster['last_error']}"
        lines.append(f"cluster   {link}")
    if ovs.get("version"):
        lines.append(
            f"OVS       {ovs['version']} (run dir {ovs['run_dir']}, bridge {ovs['bridge']})"
        )
    else:
        lines.append(f"OVS       unknown: {ovs.get('error')}")
    lines.append(
        f"flows     {h.get('desired_flows')} desired, "
        f"{_or_unknown(ovs.get('flows'))} on {ovs['bridge']}"
    )
    lines.append(
        f"groups    {h.get('desired_groups')} desired, "
        f"{_or_unknown(ovs.get('groups'))} on {ovs['bridge']}"
    )
    lines.append(f"services  {h.get('services')} in the node's table")

    peers = h.get("peers") or []
    lines.append("")
    if peers:
        rows = [
            [
                p.get("node_ip"),
                p.get("ofport"),
                _bfd(p.get("bfd") or {}),
                "-" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.3f} ms",
            ]
            for p in peers
        ]
        lines.append(render_table(["TUNNEL TO", "OFPORT", "BFD", "RTT"], rows))
    else:
        lines.append("no tunnels (no peer nodes configured)")

    lines.append("")
    containers = status["containers"]
    if containers:
        rows = [
            [
                c.get("service"),
                c.get("instance"),
                c.get("port_name"),
                c.get("ofport"),
                _join(c.get("namespace_ip"), c.get("namespace_ip_v6")),
                _join(c.get("instance_ip"), c.get("instance_ip_v6")),
            ]
            for c in sorted(containers, key=lambda c: (c.get("service"), c.get("instance")))
        ]
        lines.append(
            render_table(
                ["CONTAINER SERVICE", "#", "PORT", "OFPORT", "NAMESPACE IP", "INSTANCE IP"], rows
            )
        )
    else:
        lines.append("no local containers")
    return "\n".join(lines)


def _bfd(bfd: dict) -> str:
    if not bfd or not bfd.get("enabled", True):
        return "off"
    state = bfd.get("state", "?")
    if bfd.get("forwarding"):
        return f"{state}, forwarding"
    return f"{state}, NOT forwarding (remote {bfd.get('remote_state', '?')})"


def _ago(stamp: object) -> str:
    if not isinstance(stamp, (int, float)):
        return ""
    seconds = max(0.0, time.time() - stamp)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _join(*values: object) -> str:
    present = [str(v) for v in values if v]
    return ", ".join(present) if present else "-"


def _or_unknown(value: object) -> str:
    return "?" if value is None else str(value)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return USAGE


# -- finding a node's parts ----------------------------------------------------------------


def _load_agent_config(path: str):
    from sdn import config as agent_config

    try:
        return agent_config.load(path)
    except agent_config.ConfigError as exc:
        raise CliError(f"--config: {exc}", USAGE) from None


def _all_pids() -> list[int]:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def _netns_pids(name: str) -> list[int]:
    """The PIDs whose network namespace is the named namespace ``name``."""
    path = Path(NETNS_DIR) / name
    try:
        want = os.stat(path)
    except OSError:
        raise CliError(f"--netns: no network namespace {name} ({path})", USAGE) from None
    pids = []
    for pid in _all_pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (want.st_ino, want.st_dev):
            pids.append(pid)
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _vswitchd_run_dir(pids: list[int]) -> str | None:
    """The run directory of the ovs-vswitchd among ``pids`` (from its --pidfile argument)."""
    for pid in pids:
        argv = _cmdline(pid)
        if argv and os.path.basename(argv[0]) == "ovs-vswitchd":
            for arg in argv:
                if arg.startswith("--pidfile="):
                    return os.path.dirname(arg.split("=", 1)[1])
    return None


def _agent_config_of(pids: list[int], socket_path: str | None = None):
    """The config of an agent (``python -m sdn --config F``) among ``pids``; with
    ``socket_path``, only the agent serving that socket. None when there is none."""
    want = os.path.realpath(socket_path) if socket_path else None
    for pid in pids:
        argv = _cmdline(pid)
        if "sdn" not in argv or "-m" not in argv or argv.index("-m") + 1 != argv.index("sdn"):
            continue
        path = _option(argv, "--config")
        if not path:
            continue
        if not os.path.isabs(path):
            try:
                path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
            except OSError:
                continue
        try:
            config = _load_agent_config(path)
        except CliError:
            continue
        if want is None or os.path.realpath(config.socket) == want:
            return config
    return None


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None
