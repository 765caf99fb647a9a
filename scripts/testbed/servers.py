"""Tiny servers and clients the testbed runs inside namespaces (standalone, stdlib only).

Servers (print "ready" once listening, then serve until killed):
  servers.py http NAME PORT       GET / -> NAME; GET /info -> JSON {name, client, server}
  servers.py udp NAME PORT        each datagram -> JSON {name, client, echo}
Clients (print one JSON object with what they saw, exit 0 even on failure):
  servers.py http-get URL TIMEOUT
  servers.py udp-send HOST PORT PAYLOAD TIMEOUT [SOURCE_PORT]
Servers bind the IPv6 wildcard with IPV6_V6ONLY off, so they answer IPv4 and IPv6.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import socketserver
import sys
import time
import urllib.parse


def _split(addr: tuple) -> tuple[str, int]:
    host = addr[0]
    host = host.removeprefix("::ffff:")
    return host, addr[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "oaknet-testbed"
    name = "server"

    def do_GET(self) -> None:
        """Answer the server's name, or a JSON description of the connection at /info."""
        if self.path.startswith("/info"):
            client = _split(self.client_address)
            local = _split(self.connection.getsockname())
            body = json.dumps(
                {"name": self.name, "client": list(client), "server": list(local)}
            ).encode()
            kind = "application/json"
        else:
            body = self.name.encode()
            kind = "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        """Stay quiet: the testbed reads stdout for the ready line only."""


class _DualStackServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        """Accept IPv4 (mapped) and IPv6 on one socket."""
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve_http(name: str, port: int) -> None:
    """Serve HTTP on every address of the namespace until killed."""
    handler = type("Handler", (_Handler,), {"name": name})
    server = _DualStackServer(("::", port), handler)
    _say("ready")
    server.serve_forever()


def serve_udp(name: str, port: int) -> None:
    """Echo every datagram with the server's name and the client address."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    _say("ready")
    while True:
        data, addr = sock.recvfrom(65535)
        reply = {"name": name, "client": list(_split(addr)), "echo": data.decode(errors="replace")}
        sock.sendto(json.dumps(reply).encode(), addr)


def http_get(url: str, timeout: float) -> dict:
    """GET ``url`` once; return status, body, local/peer address, error and elapsed seconds."""
    start = time.monotonic()
    result: dict = {
        "url": url,
        "status": None,
        "body": None,
        "error": None,
        "local": None,
        "peer": None,
    }
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.connect()
        result["local"] = list(_split(conn.sock.getsockname()))
        result["peer"] = list(_split(conn.sock.getpeername()))
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        result["status"] = resp.status
        result["body"] = resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    result["elapsed"] = time.monotonic() - start
    return result


def udp_send(host: str, port: int, payload: str, timeout: float, source_port: int = 0) -> dict:
    """Send one datagram and wait for one answer; return it with its source address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    start = time.monotonic()
    result: dict = {"reply": None, "peer": None, "error": None}
    try:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", source_port))
        result["local"] = list(sock.getsockname()[:2])
        sock.sendto(payload.encode(), (host, port))
        data, addr = sock.recvfrom(65535)
        result["reply"] = json.loads(data.decode())
        result["peer"] = list(_split(addr))
    except (OSError, ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
    result["elapsed"] = time.monotonic() - start
    return result


def main(argv: list[str]) -> int:
    """Dispatch the command line."""
    cmd, args = argv[0], argv[1:]
    if cmd == "http":
        serve_http(args[0], int(args[1]))
    elif cmd == "udp":
        serve_udp(args[0], int(args[1]))
    elif cmd == "http-get":
        print(json.dumps(http_get(args[0], float(args[1]))))
    elif cmd == "udp-send":
        source = int(args[4]) if len(args) > 4 else 0
        print(json.dumps(udp_send(args[0], int(args[1]), args[2], float(args[3]), source)))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


def _say(line: str) -> None:
    """Write one whole line to stdout in one system call (a reader waits for whole lines)."""
    os.write(1, (line + "\n").encode())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
