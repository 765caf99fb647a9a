"""Node agents on testbed workers for the dataplane tests, and traffic from containers.

The agents themselves come from the testbed library (``testbed.agents``); the names are
re-exported here for the tests that import them from this module.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from testbed.agents import (
    AgentError,
    NodeAgent,
    call,
    instance,
    service,
    start_agents,
    subnets,
    write_table,
)

from tests.control.test_cli_services import oaknet  # the CLI run as a user runs it

__all__ = [
    "AgentError",
    "NodeAgent",
    "PausedUdpClient",
    "call",
    "http_many",
    "instance",
    "oaknet",
    "service",
    "start_agents",
    "start_tcp_sink",
    "subnets",
    "tcp_send",
    "udp_connected",
    "write_table",
]

REPO = Path(__file__).resolve().parents[2]


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
