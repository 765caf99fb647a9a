"""Node agents on testbed workers for the agent's dataplane tests: start, stop, talk to them."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def subnets(index: int) -> tuple[str, str]:
    """The container subnets of worker number ``index`` (1-based): a /26 and a /120."""
    return f"10.18.0.{(index - 1) * 64}/26", f"fc00::{(index - 1) * 256:x}/120"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        """Connect to the unix socket instead of TCP."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(
    sock_path: str,
    method: str,
    path: str,
    body=None,
    raw: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, dict]:
    """One request to a node API socket; returns (status, parsed JSON body)."""
    conn = _UnixHTTPConnection(sock_path, timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, (json.loads(text) if text else {})
    finally:
        conn.close()


def write_table(path: str, services: list[dict]) -> None:
    """Write a service table file atomically (agents poll it by modification time)."""
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
    """The agent process of one worker (``python -m sdn``) and its unix-socket API."""

    tb: object
    worker: object
    index: int
    peers: list[str]
    table_path: str
    dir: str = ""
    proc: object = None
    starts: int = 0
    extra: dict = field(default_factory=dict)

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
        self.config_path = os.path.join(self.dir, "agent.yaml")
        with open(self.config_path, "w") as handle:
            yaml.safe_dump(cfg, handle)
        self.socket = cfg["socket"]

    @property
    def log_path(self) -> str:
        """Where this agent's current process logs (one file per start)."""
        return os.path.join(self.dir, f"agent-{self.starts}.log")

    def start(self, wait: bool = True) -> None:
        """Start the agent in the worker's namespace; wait until it reconciled the switch."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.starts += 1
        argv = [
            sys.executable,
            "-m",
            "sdn",
            "--config",
            self.config_path,
            "--log-file",
            self.log_path,
        ]
        self.proc = self.tb.run_in(self.worker, argv, background=True, env=env)
        if wait:
            self.wait_reconciled()

    def stop(self) -> None:
        """Stop the agent process (SIGTERM); flows stay on the switch."""
        if self.proc is not None:
            self.tb.stop_process(self.proc)
            self.proc = None

    def wait_reconciled(self, timeout: float = 20) -> dict:
        """Wait for the API to answer and the switch to be reconciled; return the health."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.worker.name} exited: {self.tail()}")
            try:
                status, health = self.call("GET", "/api/v1/health")
                last = health
                if status == 200 and health["switch"]["reconciled"]:
                    return health
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"agent {self.worker.name} not reconciled: {last} {self.tail()}")

    def call(self, method: str, path: str, body=None, raw: bytes | None = None):
        """One request to this agent's API: (status, body)."""
        return call(self.socket, method, path, body, raw)

    def attach(self, container, service_name: str, number: int, **extra) -> dict:
        """Attach ``container`` as (service, instance); return the API's answer (must be 201)."""
        status, body = self.call(
            "POST",
            "/api/v1/containers",
            {"netns": container.path, "service": service_name, "instance": number, **extra},
        )
        assert status == 201, body
        return body

    def detach(self, service_name: str, number: int) -> dict:
        """Detach (service, instance); return the API's answer (must be 200)."""
        status, body = self.call("DELETE", f"/api/v1/containers/{service_name}/{number}")
        assert status == 200, body
        return body

    def health(self) -> dict:
        """GET /api/v1/health."""
        return self.call("GET", "/api/v1/health")[1]

    def services(self) -> dict:
        """The agent's table by service name."""
        return {s["name"]: s for s in self.call("GET", "/api/v1/services")[1]["services"]}

    def wait_table(self, predicate, timeout: float = 10) -> None:
        """Wait until ``predicate(table by name)`` holds for the agent's table."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.services()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"agent {self.worker.name}: table condition not met")

    def wait_peers(self, timeout: float = 15) -> None:
        """Wait until BFD forwards on every tunnel and every peer has an RTT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            peers = self.health()["peers"]
            if all(p["bfd"].get("forwarding") and p["rtt_ms"] is not None for p in peers):
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


def start_agents(tb, workers: list, table_path: str, **extra) -> list[NodeAgent]:
    """One agent per worker (peers = the other workers), started and reconciled."""
    agents = []
    for i, worker in enumerate(workers, 1):
        peers = [w.ip4 for w in workers if w is not worker]
        agents.append(NodeAgent(tb, worker, i, peers, table_path, extra=extra))
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_reconciled()
    return agents


_UDP_CLIENT = r"""
import json, os, socket, sys, time
host, port, count, gap, pause_at, flag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect((host, port))
out = {"local": list(s.getsockname()[:2]), "answers": []}
for i in range(count):
    if i == pause_at:
        print("PAUSE", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        s.send(b"probe %d" % i)
        data = s.recv(65535)
        out["answers"].append(json.loads(data.decode())["name"])
    except OSError as exc:
        out["answers"].append(type(exc).__name__)
    time.sleep(gap)
print(json.dumps(out), flush=True)
"""


def udp_connected(tb, netns: str, host: str, port: int, count: int = 1, gap: float = 0.05) -> dict:
    """Send ``count`` datagrams from ONE connected UDP socket; each answer's server name or
    the error name (``ConnectionRefusedError`` for an ICMP unreachable, ``TimeoutError``)."""
    proc = tb.run_in(
        netns,
        [sys.executable, "-c", _UDP_CLIENT, host, str(port), str(count), str(gap), "-1", "-"],
        timeout=count * (gap + 1.5) + 10,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


class PausedUdpClient:
    """A connected UDP client that sends ``before`` datagrams, waits for ``resume()``, then
    sends ``after`` more from the same socket."""

    def __init__(
        self, tb, netns: str, host: str, port: int, before: int, after: int, gap: float = 0.05
    ):
        self.flag = os.path.join(tb.base_dir, f"resume-{os.getpid()}-{id(self)}")
        argv = [
            sys.executable,
            "-c",
            _UDP_CLIENT,
            host,
            str(port),
            str(before + after),
            str(gap),
            str(before),
            self.flag,
        ]
        self.tb = tb
        self.proc = tb.run_in(netns, argv, background=True, ready_line="PAUSE")

    def resume(self, timeout: float = 30) -> dict:
        """Let the client go on; return what it saw."""
        open(self.flag, "w").close()
        self.proc.wait(timeout)
        out = self.proc.stdout.read().decode()
        self.tb.stop_process(self.proc)
        return json.loads(out.strip().splitlines()[-1])


_HTTP_MANY = r"""
import http.client, json, socket, sys
host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out = []
for _ in range(count):
    conn = http.client.HTTPConnection(host, port, timeout=3)
    try:
        conn.connect()
        peer = conn.sock.getpeername()[0]
        conn.request("GET", path)
        body = conn.getresponse().read().decode()
        out.append({"peer": peer, "body": body})
    except OSError as exc:
        out.append({"error": type(exc).__name__})
    finally:
        conn.close()
print(json.dumps(out))
"""


def http_many(
    tb, netns: str, host: str, count: int, path: str = "/info", port: int = 80
) -> list[dict]:
    """``count`` HTTP GETs, each on a new TCP connection, from one process in ``netns``:
    a list of {peer, body} (JSON bodies of /info decoded) or {error}."""
    proc = tb.run_in(
        netns,
        [sys.executable, "-c", _HTTP_MANY, host, str(port), path, str(count)],
        timeout=count * 3 + 10,
    )
    out = json.loads(proc.stdout)
    for item in out:
        if path.startswith("/info") and "body" in item:
            item["info"] = json.loads(item["body"])
    return out


_TCP_SINK = r"""
import socket, sys
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", int(sys.argv[1])))
srv.listen(8)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    total = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        total += len(data)
    conn.sendall(str(total).encode())
    conn.close()
"""

_TCP_SEND = r"""
import json, socket, sys, time
host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = b"x" * (1 << 16)
start = time.monotonic()
s = socket.create_connection((host, port), timeout=30)
sent = 0
while sent < nbytes:
    sent += s.send(chunk[: min(len(chunk), nbytes - sent)])
s.shutdown(socket.SHUT_WR)
answer = b""
while True:
    data = s.recv(64)
    if not data:
        break
    answer += data
print(json.dumps({"sent": sent, "received": int(answer or 0),
                  "seconds": time.monotonic() - start}))
"""


def start_tcp_sink(tb, where, port: int = 5001):
    """A TCP server in ``where`` that answers each connection with the byte count it read."""
    return tb.run_in(
        where, [sys.executable, "-c", _TCP_SINK, str(port)], background=True, ready_line="ready"
    )


def tcp_send(tb, netns: str, host: str, nbytes: int, port: int = 5001) -> dict:
    """Send ``nbytes`` on one TCP connection; return sent, received (as the server counted)
    and seconds."""
    proc = tb.run_in(
        netns, [sys.executable, "-c", _TCP_SEND, host, str(port), str(nbytes)], timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
