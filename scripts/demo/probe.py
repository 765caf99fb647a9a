"""Clients the demo runs inside container namespaces (standalone, stdlib only)."""

# Commands (http and udp print one JSON document {"answers": [...]} on stdout):
#   probe.py http HOST PORT COUNT TIMEOUT      COUNT GETs, each on a new connection
#   probe.py udp HOST PORT COUNT TIMEOUT       COUNT datagrams, each from a new socket
#   probe.py watch-http HOST PORT GAP DIR        GETs every GAP s until DIR/stop exists
#   probe.py watch-udp HOST PORT GAP DIR [PIN]   datagrams from connected sockets: one that PIN
#                                                answers and one that another instance answers
# Answers are {"t": monotonic time, "ms": round trip, "name": server} or {"t", "ms", "error"};
# the servers (scripts/testbed/servers.py) answer with their name. The watch commands print
# "ready" once set up and append each answer as a JSON line to DIR/answers.jsonl.

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time


def http_once(host: str, port: int, timeout: float) -> dict:
    """One GET / on a new TCP connection: the server's name and the round trip."""
    start = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        name = conn.getresponse().read().decode(errors="replace")
        out = {"name": name}
    except (OSError, http.client.HTTPException) as exc:
        out = {"error": type(exc).__name__}
    finally:
        conn.close()
    out.update(t=start, ms=(time.monotonic() - start) * 1000)
    return out


def udp_once(sock: socket.socket, host: str, port: int) -> dict:
    """One datagram and its answer on ``sock``: the server's name and the round trip."""
    start = time.monotonic()
    try:
        sock.sendto(b"probe", (host, port))
        data, _ = sock.recvfrom(65535)
        out = {"name": json.loads(data.decode())["name"]}
    except (OSError, ValueError, KeyError) as exc:
        out = {"error": type(exc).__name__}
    out.update(t=start, ms=(time.monotonic() - start) * 1000)
    return out


def udp_socket(host: str, timeout: float) -> socket.socket:
    """A UDP socket of the address family of ``host``."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    return sock


def main(argv: list[str]) -> int:
    """Dispatch the command line."""
    cmd, host, port = argv[0], argv[1], int(argv[2])
    if cmd == "http":
        count, timeout = int(argv[3]), float(argv[4])
        answers = [http_once(host, port, timeout) for _ in range(count)]
    elif cmd == "udp":
        count, timeout = int(argv[3]), float(argv[4])
        answers = []
        for _ in range(count):
            with udp_socket(host, timeout) as sock:
                answers.append(udp_once(sock, host, port))
    elif cmd in ("watch-http", "watch-udp"):
        watch(cmd, host, port, float(argv[3]), argv[4], argv[5] if len(argv) > 5 else "")
        return 0
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    print(json.dumps({"answers": answers}), flush=True)
    return 0


def watch(cmd: str, host: str, port: int, gap: float, where: str, pin: str = "") -> None:
    """Probe every ``gap`` seconds until the file ``where``/stop exists.

    ``watch-udp`` sends from connected sockets, each one 5-tuple and so one instance; with
    ``pin`` it keeps a socket that ``pin`` answers and one another instance answers.
    """
    socks = udp_pinned(host, port, pin) if cmd == "watch-udp" else []
    stop = os.path.join(where, "stop")
    out = open(os.path.join(where, "answers.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
    print("ready", flush=True)
    turn = 0
    while not os.path.exists(stop):
        if socks:
            index = turn % len(socks)
            answer = udp_once_connected(socks[index])
            answer["sock"] = index
            answer["port"] = socks[index].getsockname()[1]
        else:
            answer = http_once(host, port, 0.5)
        out.write(json.dumps(answer) + "\n")
        out.flush()
        turn += 1
        time.sleep(max(0.0, gap / max(1, len(socks)) - answer["ms"] / 1000))
    out.close()


def udp_pinned(host: str, port: int, pin: str, tries: int = 40) -> list[socket.socket]:
    """Connected UDP sockets: the first answered by ``pin`` (if any) and one answered by
    another instance."""
    kept: dict[bool, socket.socket] = {}
    for _ in range(tries):
        sock = udp_socket(host, 0.5)
        sock.connect((host, port))
        answer = udp_once_connected(sock)
        pinned = answer.get("name") == pin
        if "name" in answer and pinned not in kept:
            kept[pinned] = sock
        else:
            sock.close()
        if len(kept) == 2 or (not pin and kept):
            break
    return [kept[k] for k in (True, False) if k in kept]


def udp_once_connected(sock: socket.socket) -> dict:
    """One datagram on a connected socket and its answer."""
    start = time.monotonic()
    try:
        sock.send(b"probe")
        out = {"name": json.loads(sock.recv(65535).decode())["name"]}
    except (OSError, ValueError, KeyError) as exc:
        out = {"error": type(exc).__name__}
    out.update(t=start, ms=(time.monotonic() - start) * 1000)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
