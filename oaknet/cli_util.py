"""Shared pieces of the ``oaknet`` command line: its error type, exit codes and text tables."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
from collections.abc import Sequence

OK = 0
FAILURE = 1  # the command ran and something is wrong or unreachable
USAGE = 2  # the command line itself is wrong (argparse uses 2 too)


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit code to return."""

    def __init__(self, message: str, code: int = FAILURE):
        super().__init__(message)
        self.message = message
        self.code = code


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0 and at most 3600")
    return value


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as aligned text columns under ``headers`` (None shows as ``-``)."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def run_tool(argv: list[str], timeout: float = 10.0) -> str:
    """Run a local tool (ovs-appctl, ovs-ofctl, ...); its stdout, or CliError with its error."""
    # The tool and its subcommand name the failure (paths and sockets would only be noise).
    what = " ".join(
        [os.path.basename(argv[0])]
        + [a for a in argv[1:] if not a.startswith(("-", "/", "unix:", "OpenFlow"))][:1]
    )
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise CliError(f"{argv[0]} is not installed (run scripts/install.sh)") from None
    except subprocess.TimeoutExpired:
        raise CliError(f"{what}: no answer in {timeout:.0f} s") from None
    if proc.returncode != 0:
        # ovs-appctl prints the daemon's own error on stdout and a generic line on stderr.
        lines = [x for x in (proc.stdout + "\n" + proc.stderr).splitlines() if x.strip()]
        specific = [x for x in lines if "server returned an error" not in x]
        detail = (specific or lines or ["failed"])[0].strip()
        raise CliError(f"{what}: {detail}")
    return proc.stdout


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket (the node agent's API); also used by the testbed."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Connect to the socket file instead of a TCP address."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def unix_get(path: str, url_path: str, timeout: float = 5.0) -> tuple[int, object]:
    """GET ``url_path`` from the HTTP server on unix socket ``path``: (status, decoded JSON).

    Raises OSError when the socket is missing or refuses, ValueError for a non-JSON answer.
    """
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", url_path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        text = resp.read()
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP answer: {exc}") from None
    finally:
        conn.close()
    return resp.status, json.loads(text) if text else None
