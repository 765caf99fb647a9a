"""Servers and clients the data-plane benchmark runs inside namespaces (standalone, stdlib only)."""

# Commands (clients print one JSON document on stdout):
#   dp_tools.py serve TCP_PORT UDP_PORT     TCP: read a request, answer "ok\n" and close (the
#                                           server closes first, so TIME_WAIT stays with it);
#                                           UDP: echo each datagram. Prints "ready".
#   dp_tools.py udp-rtt HOST PORT COUNT GAP [TIMEOUT]   one connected socket: COUNT round
#                                                 trips (ms) and how many got no answer
#   dp_tools.py tcp-rr HOST PORT COUNT            COUNT new connections one after another:
#                                                 connect + request + whole answer (ms each)
#   dp_tools.py cps HOST PORT SECONDS PARALLEL    new connections per second, PARALLEL at a time
#   dp_tools.py first HOST PORT TIMEOUT           one request: ms to the first answer byte and
#                                                 the namespace's TCP RetransSegs delta

from __future__ import annotations

import json
import selectors
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.0\r\n\r\n"
ANSWER = b"ok\n"


def serve(tcp_port: int, udp_port: int) -> None:
    """Answer TCP requests and echo UDP datagrams on every address until killed."""
    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("::", tcp_port))
    lsock.listen(1024)
    lsock.setblocking(False)
    usock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    usock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    usock.bind(("::", udp_port))
    usock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, "accept")
    sel.register(usock, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "accept":
                _accept(sel, lsock)
            elif key.data == "udp":
                _echo(usock)
            else:
                _answer(sel, key.fileobj)


def _accept(sel: selectors.BaseSelector, lsock: socket.socket) -> None:
    while True:
        try:
            conn, _ = lsock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ, "conn")


def _echo(usock: socket.socket) -> None:
    while True:
        try:
            data, addr = usock.recvfrom(65535)
        except BlockingIOError:
            return
        usock.sendto(data, addr)


def _answer(sel: selectors.BaseSelector, conn: socket.socket) -> None:
    try:
        data = conn.recv(4096)
        if data:
            conn.send(ANSWER)
    except OSError:
        pass
    sel.unregister(conn)
    conn.close()


def udp_rtt(host: str, port: int, count: int, gap: float, timeout: float = 1.0) -> dict:
    """Round trips of one datagram each on one connected socket (one conntrack entry)."""
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.connect((host, port))
    rtts, lost = [], 0
    for i in range(count):
        payload = str(i).encode()
        start = time.perf_counter()
        sock.send(payload)
        try:
            while sock.recv(65535) != payload:
                pass  # a late answer to an earlier, timed-out datagram
            rtts.append((time.perf_counter() - start) * 1000)
        except OSError:
            lost += 1
        time.sleep(gap)
    sock.close()
    return {"ms": rtts, "lost": lost}


def tcp_rr(host: str, port: int, count: int) -> dict:
    """Connect, send a request and read the whole answer, ``count`` times in a row."""
    times, errors = [], 0
    for _ in range(count):
        start = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=3) as sock:
                sock.sendall(REQUEST)
                while sock.recv(4096):
                    pass
            times.append((time.perf_counter() - start) * 1000)
        except OSError:
            errors += 1
    return {"ms": times, "errors": errors}


def cps(host: str, port: int, seconds: float, parallel: int) -> dict:
    """Complete connect + request + answer cycles for ``seconds`` with ``parallel`` in flight."""
    sel = selectors.DefaultSelector()
    done = errors = 0
    end = time.perf_counter() + seconds
    for _ in range(parallel):
        _open(sel, host, port)
    while sel.get_map():
        for key, mask in sel.select(timeout=1.0):
            sock, state = key.fileobj, key.data
            ok = True
            try:
                if state == "connecting":
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise OSError("connect failed")
                    sock.send(REQUEST)
                    sel.modify(sock, selectors.EVENT_READ, "reading")
                    continue
                if sock.recv(4096):
                    continue
            except OSError:
                ok = False
            sel.unregister(sock)
            sock.close()
            done += ok
            errors += not ok
            if time.perf_counter() < end:
                _open(sel, host, port)
    return {"per_s": done / seconds, "done": done, "errors": errors}


def _open(sel: selectors.BaseSelector, host: str, port: int) -> None:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex((host, port))
    sel.register(sock, selectors.EVENT_WRITE, "connecting")


def first(host: str, port: int, timeout: float) -> dict:
    """One request on a new connection: ms until the first answer byte, and retransmissions."""
    before = _retrans_segs()
    start = time.perf_counter()
    out: dict = {"ok": False}
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(REQUEST)
            out["ok"] = bool(sock.recv(1))
            out["ms"] = (time.perf_counter() - start) * 1000
    except OSError as exc:
        out["error"] = type(exc).__name__
        out["ms"] = (time.perf_counter() - start) * 1000
    out["retrans"] = _retrans_segs() - before
    return out


def _retrans_segs() -> int:
    """This network namespace's TCP RetransSegs counter (SYN retransmissions included)."""
    with open("/proc/net/snmp", encoding="ascii") as handle:
        rows = [line.split() for line in handle if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def main(argv: list[str]) -> int:
    """Dispatch the command line."""
    cmd, args = argv[0], argv[1:]
    if cmd == "serve":
        serve(int(args[0]), int(args[1]))
        return 0
    if cmd == "udp-rtt":
        timeout = float(args[4]) if len(args) > 4 else 1.0
        out = udp_rtt(args[0], int(args[1]), int(args[2]), float(args[3]), timeout)
    elif cmd == "tcp-rr":
        out = tcp_rr(args[0], int(args[1]), int(args[2]))
    elif cmd == "cps":
        out = cps(args[0], int(args[1]), float(args[2]), int(args[3]))
    elif cmd == "first":
        out = first(args[0], int(args[1]), float(args[2]))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
