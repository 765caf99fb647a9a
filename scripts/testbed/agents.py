"""Node agents (``python -m sdn``) on testbed workers: config, start, stop, node API calls."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from oaknet.cli_util import UnixHTTPConnection
from testbed.nodes import Container, Worker

LOG = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


class AgentError(RuntimeError):
    """An agent exited, did not get ready in time, or refused a request."""


def subnets(index: int) -> tuple[str, str]:
    """The container subnets of worker number ``index`` (1-based): a /26 and a /120."""
    return f"10.18.0.{(index - 1) * 64}/26", f"fc00::{(index - 1) * 256:x}/120"


def call(
    sock_path: str,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, dict]:
    """One request to a node API socket; returns (status, parsed JSON body)."""
    conn = UnixHTTPConnection(sock_path, timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, (json.loads(text) if text else {})
    finally:
        conn.close()


def write_table(path: str, services: list[dict]) -> None:
    """Write a service table file atomically (offline agents poll it by modification time)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".table-")
    with os.fdopen(fd, "w") as handle:
        json.dump(services, handle)
    os.replace(tmp, path)


def service(
    name: str,
    rr: str | None = None,
    rr6: str | None = None,
    closest: str | None = None,
    instances: list[dict] | None = None,
) -> dict:
    """A service record as the table file holds it."""
    ips = []
    if rr or rr6:
        ips.append({"policy": "round-robin", "ipv4": rr, "ipv6": rr6})
    if closest:
        ips.append({"policy": "closest", "ipv4": closest})
    return {"name": name, "service_ips": ips, "instances": instances or []}


def instance(number: int, ip: str, node_ip: str, ip6: str | None = None) -> dict:
    """An instance record: its instance IP(s) and the node it is placed on."""
    return {"number": number, "instance_ip": ip, "instance_ip_v6": ip6, "node_ip": node_ip}


@dataclass
class NodeAgent:
    """The agent process of one worker (``python -m sdn``) and its unix-socket API.

    The config is written at construction into ``<testbed dir>/agent-<worker>/agent.yaml``:
    offline mode with ``table_path`` and the subnets of worker ``index``; ``extra`` overrides
    or adds keys (a key set to None is left out, which is how cluster mode drops the subnets).
    """

    tb: Any  # testbed.Testbed (not imported: the core imports nothing of this module)
    worker: Worker
    index: int
    peers: list[str]
    table_path: str | None
    dir: str = ""
    proc: Any = None
    starts: int = 0
    extra: dict = field(default_factory=dict)
    attached: list[dict] = field(default_factory=list)  # the node API's attach answers

    def __post_init__(self) -> None:
        self.dir = os.path.join(self.tb.base_dir, f"agent-{self.worker.name}")
        os.makedirs(self.dir, exist_ok=True)
        v4, v6 = subnets(self.index)
        cfg = {
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
            "socket": os.path.join(self.dir, "agent.sock"),
            "state_dir": os.path.join(self.dir, "state"),
            **self.extra,
        }
        self.config = {k: v for k, v in cfg.items() if v is not None}
        self.config_path = os.path.join(self.dir, "agent.yaml")
        with open(self.config_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(self.config, handle)
        self.socket = self.config["socket"]

    @property
    def log_path(self) -> str:
        """Where this agent's current process logs (one file per start)."""
        return os.path.join(self.dir, f"agent-{self.starts}.log")

    def start(self, wait: bool = True) -> None:
        """Start the agent in the worker's namespace; wait until it reconciled the switch."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.starts += 1
        argv = [sys.executable, "-m", "sdn", "--config", self.config_path]
        argv += ["--log-file", self.log_path]
        self.proc = self.tb.run_in(self.worker, argv, background=True, env=env)
        LOG.info("agent of %s started: pid %d", self.worker.name, self.proc.pid)
        if wait:
            self.wait_reconciled()

    def stop(self) -> None:
        """Stop the agent process (SIGTERM); flows stay on the switch."""
        if self.proc is not None:
            self.tb.stop_process(self.proc)
            self.proc = None
            LOG.info("agent of %s stopped", self.worker.name)

    def poll_health(self) -> dict | None:
        """The health document, or None while the API does not answer; AgentError if the
        process exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AgentError(f"agent {self.worker.name} exited: {self.tail()}")
        try:
            status, health = self.call("GET", "/api/v1/health")
        except OSError:
            return None
        return health if status == 200 else None

    def wait_reconciled(self, timeout: float = 20) -> dict:
        """Wait for the API to answer and the switch to be reconciled; return the health."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.poll_health() or last
            if last and last["switch"]["reconciled"]:
                return last
            time.sleep(0.1)
        raise TimeoutError(f"agent {self.worker.name} not reconciled: {last} {self.tail()}")

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None):
        """One request to this agent's API: (status, body)."""
        return call(self.socket, method, path, body, raw)

    def attach(self, container: Container, service_name: str, number: int, **extra) -> dict:
        """Attach ``container`` as (service, instance); the API's answer (AgentError unless
        201). ``extra`` adds request keys such as ``port_mappings``."""
        status, body = self.call(
            "POST",
            "/api/v1/containers",
            {"netns": container.path, "service": service_name, "instance": number, **extra},
        )
        if status != 201:
            raise AgentError(f"attach {container.name} on {self.worker.name}: {status} {body}")
        self.attached.append(body)
        return body

    def detach(self, service_name: str, number: int) -> dict:
        """Detach (service, instance); the API's answer (AgentError unless 200)."""
        status, body = self.call("DELETE", f"/api/v1/containers/{service_name}/{number}")
        if status != 200:
            raise AgentError(f"detach {service_name}#{number}: {status} {body}")
        self.attached = [
            a
            for a in self.attached
            if (a.get("service"), a.get("instance")) != (service_name, number)
        ]
        return body

    def health(self) -> dict:
        """GET /api/v1/health."""
        return self.call("GET", "/api/v1/health")[1]

    def services(self) -> dict:
        """The agent's table by service name."""
        return {s["name"]: s for s in self.call("GET", "/api/v1/services")[1]["services"]}

    def wait_table(self, predicate: Callable[[dict], bool], timeout: float = 10) -> None:
        """Wait until ``predicate(table by name)`` holds for the agent's table."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.services()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"agent {self.worker.name}: table condition not met")

    def peers_up(self) -> bool:
        """True when BFD forwards on every tunnel and every peer has an RTT."""
        peers = self.health()["peers"]
        return all(p["bfd"].get("forwarding") and p["rtt_ms"] is not None for p in peers)

    def wait_peers(self, timeout: float = 15) -> None:
        """Wait until BFD forwards on every tunnel and every peer has an RTT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.peers_up():
                return
            time.sleep(0.2)
        raise TimeoutError(f"agent {self.worker.name}: peers not up: {self.health()['peers']}")

    def tail(self, lines: int = 30) -> str:
        """The end of the current log (for failure messages)."""
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""


def start_agents(tb, workers: list[Worker], table_path: str, **extra) -> list[NodeAgent]:
    """One offline agent per worker (peers = the other workers), started and reconciled."""
    agents = []
    for i, worker in enumerate(workers, 1):
        peers = [w.ip4 for w in workers if w is not worker]
        agents.append(NodeAgent(tb, worker, i, peers, table_path, extra=extra))
    return _start_all(agents, 20)


def cluster_agent(
    tb, worker: Worker, index: int, cluster_url: str, token: str, **extra
) -> NodeAgent:
    """A cluster-mode NodeAgent of ``worker`` (token in a file of its own); not started.

    The node id is the token's subject when it is a JWT; give ``node_id`` in ``extra`` for a
    static token.
    """
    token_dir = Path(tb.base_dir) / f"token-{worker.name}"
    token_dir.mkdir(mode=0o700, exist_ok=True)
    token_file = token_dir / "node.jwt"
    token_file.write_text(token)
    token_file.chmod(0o600)
    settings = {
        "subnet_v4": None,
        "subnet_v6": None,
        "service_table": None,
        "table_poll_s": None,
        "cluster_url": cluster_url,
        "node_token_file": str(token_file),
        "watch_timeout_s": 5,
        "cluster_retry_s": 0.2,
        "rtt_interval_s": 0.5,
        **extra,
    }
    return NodeAgent(tb, worker, index, [], None, extra=settings)


def start_cluster_agents(
    tb, workers: list[Worker], cluster_url: str, tokens: dict[str, str], **extra
) -> list[NodeAgent]:
    """One cluster-mode agent per worker (``tokens`` by worker name), started and reconciled."""
    agents = [
        cluster_agent(tb, w, i, cluster_url, tokens[w.name], **extra)
        for i, w in enumerate(workers, 1)
    ]
    return _start_all(agents, 40)


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    interval: float = 0.1,
    explain: Callable[[], str] | None = None,
):
    """Poll ``check()`` until it returns something truthy; return that or raise TimeoutError
    (with ``explain()``'s text, e.g. the end of a log, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            why = f"; {explain()}" if explain else ""
            raise TimeoutError(f"timed out waiting for {what}{why}")
        time.sleep(interval)


def _start_all(agents: list[NodeAgent], timeout: float) -> list[NodeAgent]:
    # All start at once: each spends seconds importing its libraries.
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_reconciled(timeout=timeout)
    return agents
