"""``oaknet node status`` and ``oaknet trace`` without an agent: their error messages.

The same commands against real agents and their OVS are in tests/dataplane/test_cli_agents.py.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading

import pytest

from tests.control.test_cli_services import oaknet

# -- without an agent ----------------------------------------------------------------------


@pytest.mark.control
def test_status_names_a_missing_socket(tmp_path):
    path = tmp_path / "agent.sock"
    out = oaknet("node", "status", "--socket", str(path))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"oaknet: no agent socket at {path} (is the agent running? "
        "give --socket, --config or --netns)"
    )


@pytest.mark.control
def test_status_names_a_socket_nobody_serves(tmp_path):
    path = str(tmp_path / "agent.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # the file stays after close, as after a killed agent
    dead.close()
    out = oaknet("node", "status", "--socket", path)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"oaknet: agent socket {path} refuses connections (the agent is not running)"
    )


@pytest.mark.control
def test_status_names_a_socket_that_is_not_an_agent(tmp_path):
    path = str(tmp_path / "other.sock")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"detail": "no such page"}')

        def log_message(self, *args):
            pass

        def address_string(self):
            return "unix"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = Server(path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = oaknet("node", "status", "--socket", path)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"oaknet: the agent at {path} answered 404 to /api/v1/health: no such page"
    )


@pytest.mark.control
def test_trace_usage_errors_exit_2(tmp_path):
    out = oaknet("trace", "--run-dir", str(tmp_path), "--from", "1", "--to", "nowhere")
    assert (out.returncode, out.stderr.strip()) == (
        2,
        "oaknet: --to 'nowhere' is not an IP address",
    )
    out = oaknet("trace", "--netns", "okxnotthere", "--from", "1", "--to", "10.30.0.1")
    assert (out.returncode, out.stderr.strip()) == (
        2,
        "oaknet: --netns: no network namespace okxnotthere (/run/netns/okxnotthere)",
    )
    out = oaknet(
        "trace",
        "--run-dir",
        str(tmp_path),
        "--socket",
        str(tmp_path / "s"),
        "--from",
        "1",
        "--to",
        "10.30.0.1",
    )
    assert out.returncode == 1
    assert f"no ovs-vswitchd runs for {tmp_path}" in out.stderr
    out = oaknet("trace", "--to", "10.30.0.1")
    assert out.returncode == 2 and "--from" in out.stderr
