"""Processes inside namespaces: run, start in the background, stop; and the client helpers."""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ovs_setup.netns import netns_path, open_netns, setns

LOG = logging.getLogger(__name__)

SERVERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers.py")


class ProcessError(RuntimeError):
    """A process in a namespace failed to start or to answer."""


def run(
    netns: str | None,
    argv: list[str],
    timeout: float = 30,
    check: bool = False,
    env: dict | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` to completion inside ``netns`` (None: here) and return its result."""
    fd = open_netns(netns) if netns is not None else None
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=env,
            input=input,
            preexec_fn=_enter(fd),
        )
    finally:
        if fd is not None:
            os.close(fd)


def spawn(
    netns: str | None,
    argv: list[str],
    log_path: str | None = None,
    env: dict | None = None,
    stdin_pipe: bool = False,
    ready_line: str | None = None,
    ready_timeout: float = 10,
) -> subprocess.Popen:
    """Start ``argv`` in ``netns`` in its own session; optionally wait for ``ready_line``.

    Output goes to ``log_path`` (or is discarded); with ``ready_line`` stdout is a pipe that is
    read until that line arrives.
    """
    fd = open_netns(netns) if netns is not None else None
    # The child gets the log file; ours is closed right after the start.
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115
    sink = log if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if ready_line else sink,
            stderr=sink,
            env=env,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_enter(fd),  # noqa: PLW1509 - only a setns() runs in the child
        )
    finally:
        if fd is not None:
            os.close(fd)
        if log is not None:
            log.close()
    LOG.debug("started %s in %s: pid %d", argv[0], netns or "-", proc.pid)
    if ready_line:
        try:
            _wait_line(proc, ready_line, ready_timeout)
        except ProcessError:
            stop(proc)
            raise
    return proc


def stop(proc: subprocess.Popen, timeout: float = 3.0) -> None:
    """Stop a process started by ``spawn`` and its session: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    else:
        # The leader is gone; children of its session may still be there.
        _signal_group(proc.pid, signal.SIGKILL)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@dataclass
class PingResult:
    """What ping saw: packets sent and answered, each reply's RTT in ms."""

    transmitted: int
    received: int
    rtts: list[float] = field(default_factory=list)

    @property
    def avg(self) -> float | None:
        """Return the mean RTT in ms, None without replies."""
        return sum(self.rtts) / len(self.rtts) if self.rtts else None


def ping(
    netns: str, dst: str, count: int = 3, interval: float = 0.2, wait: float = 1.0
) -> PingResult:
    """Ping ``dst`` from inside ``netns`` and return what came back."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), dst]
    proc = run(netns, argv, timeout=count * (interval + wait) + 5)
    sent = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", proc.stdout)]
    if not sent:
        raise ProcessError(f"ping {dst} in {netns}: {proc.stderr.strip() or proc.stdout}")
    return PingResult(int(sent.group(1)), int(sent.group(2)), rtts)


def http_get(netns: str, url: str, timeout: float = 5.0) -> dict:
    """GET ``url`` from inside ``netns``; return status, body, local, peer, error, elapsed."""
    return _client(netns, ["http-get", url, str(timeout)], timeout)


def udp_send(
    netns: str,
    host: str,
    port: int,
    payload: str = "ping",
    timeout: float = 2.0,
    source_port: int = 0,
) -> dict:
    """Send one UDP datagram from ``netns``; return the reply (JSON), peer, error, elapsed."""
    args = ["udp-send", host, str(port), payload, str(timeout), str(source_port)]
    return _client(netns, args, timeout)


def iperf3(
    netns: str,
    server: str,
    seconds: float | None = 2,
    nbytes: int | None = None,
    port: int = 5201,
    reverse: bool = False,
) -> dict:
    """Run an iperf3 client in ``netns``; return sent_bytes, bytes (received),
    bits_per_second (received), retransmits, error."""
    argv = ["iperf3", "-c", server, "-p", str(port), "-J"]
    argv += ["-n", str(nbytes)] if nbytes else ["-t", str(seconds)]
    if reverse:
        argv.append("-R")
    proc = run(netns, argv, timeout=(seconds or 0) + 60)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return {"error": proc.stderr.strip() or "no report", "bytes": 0, "sent_bytes": 0}
    if "error" in report:
        return {"error": report["error"], "bytes": 0, "sent_bytes": 0}
    end = report["end"]
    return {
        "sent_bytes": end["sum_sent"]["bytes"],
        "bytes": end["sum_received"]["bytes"],
        "bits_per_second": end["sum_received"]["bits_per_second"],
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
        "error": None,
    }


def _client(netns: str, args: list[str], timeout: float) -> dict:
    proc = run(netns, [sys.executable, SERVERS, *args], timeout=timeout + 10)
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise ProcessError(f"client {args[0]} in {netns}: {proc.stderr.strip()}") from exc


def _enter(fd: int | None):
    if fd is None:
        return None

    def enter() -> None:
        setns(fd)

    return enter


def _wait_line(proc: subprocess.Popen, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    buffered = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffered += chunk
            # Only a whole line counts: the rest of it must not be left for the next reader.
            if (line + "\n").encode() in buffered.splitlines(keepends=True):
                return
        elif proc.poll() is not None:
            break
    raise ProcessError(
        f"{proc.args[0]} (pid {proc.pid}) did not print {line!r}: "
        f"{buffered.decode(errors='replace').strip()}"
    )


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def pids_in_netns(netns: str) -> list[int]:
    """Return the PIDs of the processes that live in the network namespace ``netns``."""
    try:
        target = os.stat(netns_path(netns))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found
