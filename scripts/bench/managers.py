"""Managers benchmark: root table queries per second and change fan-out to long-poll watchers."""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing as mp
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import yaml

from bench.mgr_clients import CLIENT_THREADS, query_worker, request, watch_worker

GROUP = "managers"

REPO = Path(__file__).resolve().parents[2]
FAN_JOB = "fan"
CLIENT_PROCS = 2  # table-query client processes (each with threads of keep-alive connections)
WATCH_PROCS = 4


@dataclass
class Sizes:
    """How big one run is."""

    services: int
    query_seconds: float
    watchers: int
    changes: int


FULL = Sizes(services=200, query_seconds=8.0, watchers=100, changes=25)
SMOKE = Sizes(services=20, query_seconds=2.0, watchers=10, changes=5)


def run(smoke: bool, say: Callable[[str], None]) -> dict[str, float]:
    """Start a real root manager process, fill it, measure table queries and feed fan-out."""
    sizes = SMOKE if smoke else FULL
    out: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="okbm-") as tmp,
        RootProcess(Path(tmp), sizes.watchers) as root,
    ):
        say(f"managers: root manager pid {root.pid} on port {root.port}")
        names = fill(root, sizes.services)
        say(f"managers: {len(names)} services deployed")
        out.update(table_queries(root, names, sizes.query_seconds, say))
        out.update(fanout(root, sizes.watchers, sizes.changes, say))
        out["sigterm_exit_s"] = root.stop_with_open_poll()
        say(f"managers: SIGTERM with an open long-poll: exit in {out['sigterm_exit_s']:.3f} s")
    return out


# -- the root manager process --------------------------------------------------------------


class RootProcess:
    """``python -m root_manager`` on loopback with its own temp dir, store and random tokens."""

    def __init__(self, tmp: Path, clusters: int):
        self.tmp = tmp
        self.orch = secrets.token_hex(16)
        self.clusters = {f"bench-c{i:03d}": secrets.token_hex(16) for i in range(clusters)}
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        """The manager's process id."""
        return self.proc.pid if self.proc else 0

    def __enter__(self) -> Self:
        tokens = {self.orch: {"subject": "bench-orchestrator", "roles": ["orchestrator"]}}
        tokens.update({t: {"subject": c, "roles": ["cluster"]} for c, t in self.clusters.items()})
        port_file = self.tmp / "root.port"
        cfg = {
            "server": {"host": "127.0.0.1", "port": 0, "port_file": str(port_file)},
            "store": {"url": f"sqlite:///{self.tmp / 'root.db'}"},
            "auth": {"tokens": tokens},
            "log_level": "WARNING",
        }
        (self.tmp / "root.yaml").write_text(yaml.safe_dump(cfg))
        self._log = open(self.tmp / "root.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "root_manager", "--config", str(self.tmp / "root.yaml")],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"root manager did not start: {self.log()}")
                time.sleep(0.05)
            self.port = int(port_file.read_text())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def log(self) -> str:
        """The manager's output so far."""
        return (self.tmp / "root.log").read_text()

    def cpu_seconds(self) -> float:
        """User + system CPU time the manager process has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def call(self, method: str, path: str, token: str, body: object = None) -> object:
        """One request on a fresh connection; the decoded JSON answer (raises on non-2xx)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            status, data = request(conn, method, path, token, body)
        finally:
            conn.close()
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
        return json.loads(data)

    def stop_with_open_poll(self) -> float:
        """Send SIGTERM while a watcher long-polls; seconds until the process has exited."""
        token = next(iter(self.clusters.values()))
        head = self.call("GET", "/api/health", token)["revision"]
        poll = threading.Thread(target=self._poll_once, args=(token, head), daemon=True)
        poll.start()
        wait_for(lambda: self.call("GET", "/api/health", token)["watchers"] >= 1, 10)
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        return time.monotonic() - started

    def _poll_once(self, token: str, since: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        with contextlib.suppress(OSError, http.client.HTTPException):
            request(conn, "GET", f"/api/net/watch?since={since}&timeout=50", token)
        conn.close()


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` every 5 ms until true; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {check}")
        time.sleep(0.005)


def fill(root: RootProcess, services: int) -> list[str]:
    """Register the clusters, deploy ``services`` services with two running instances each."""
    for n, cluster in enumerate(root.clusters):
        body = {"cluster_id": cluster, "cluster_address": "127.0.0.1", "cluster_port": 20000 + n}
        root.call("POST", "/api/net/cluster", root.orch, body)
    first = next(iter(root.clusters))
    names = []
    for i in range(services + 1):
        job = FAN_JOB if i == services else f"j{i}"
        app = "fan" if i == services else f"app{i}"
        descriptor = {
            "app_name": app,
            "app_ns": "bench",
            "service_name": "web",
            "service_ns": "bench",
            "applicationID": f"id-{app}",
        }
        root.call("POST", "/api/net/service/deploy", root.orch, {"_id": job, **_dd(descriptor)})
        for number in (0, 1):
            body = {"_id": job, "instance_number": number, "cluster_id": first}
            root.call("POST", "/api/net/instance/deploy", root.orch, body)
        root.call("POST", "/api/net/service/net_deploy_status", root.orch, _report(job, i, 0))
        if i < services:
            names.append(f"{app}_bench_web_bench")
    return names


def _dd(descriptor: dict) -> dict:
    return {"deployment_descriptor": descriptor}


def _report(job: str, i: int, port: int) -> dict:
    instances = [
        {
            "instance_number": n,
            "namespace_ip": f"10.18.{i // 200}.{(i % 200) + 2 + n}",
            "namespace_ip_v6": f"fc00::{i:x}:{n + 2}",
            "host_ip": f"192.0.2.{n + 1}",
            "host_port": 50000 + port,
        }
        for n in (0, 1)
    ]
    return {"job_id": job, "instances": instances}


# -- table queries -------------------------------------------------------------------------


def table_queries(
    root: RootProcess, names: list[str], seconds: float, say: Callable[[str], None]
) -> dict[str, float]:
    """Concurrent keep-alive clients query the table by name as clusters do; rate and costs.

    Each client first asks for every service once (the first query of a cluster also stores
    its interest, a write); the measured window then repeats queries, the read path.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    go = ctx.Event()
    tokens = list(root.clusters.values())
    procs = [
        ctx.Process(
            target=query_worker,
            args=(root.port, tokens, names, p, go, seconds, results),
            daemon=True,
        )
        for p in range(CLIENT_PROCS)
    ]
    for proc in procs:
        proc.start()
    try:
        warm = [results.get(timeout=300) for _ in procs]
        first_rps = sum(n for n, _ in warm) / max(s for _, s in warm)
        cpu0 = root.cpu_seconds()
        go.set()
        done = [results.get(timeout=seconds + 60) for _ in procs]
        server_cpu = root.cpu_seconds() - cpu0
    finally:
        _end(procs)
    count = sum(d["count"] for d in done)
    errors = sum(d["errors"] for d in done)
    if errors:
        raise RuntimeError(f"{errors} table queries failed")
    latencies = sorted(x for d in done for x in d["latencies"])
    client_cpu = sum(d["cpu"] for d in done)
    rps = count / seconds
    say(
        f"managers: {rps:.0f} table queries/s from {CLIENT_PROCS}x{CLIENT_THREADS} clients "
        f"(first queries, with interest writes: {first_rps:.0f}/s); per query "
        f"{1e6 * server_cpu / count:.0f} us server CPU, {1e6 * client_cpu / count:.0f} us client"
    )
    return {
        "table_query_rps": rps,
        "table_query_p50_ms": 1000 * _pct(latencies, 50),
        "table_query_p99_ms": 1000 * _pct(latencies, 99),
        "table_query_server_cpu_us": 1e6 * server_cpu / count,
        "table_query_client_cpu_us": 1e6 * client_cpu / count,
        "first_query_rps": first_rps,
    }


# -- fan-out -------------------------------------------------------------------------------


def fanout(
    root: RootProcess, watchers: int, changes: int, say: Callable[[str], None]
) -> dict[str, float]:
    """``watchers`` clusters long-poll the feed; per change, the time until each one has it."""
    name = f"{FAN_JOB}_bench_web_bench"
    tokens = list(root.clusters.values())[:watchers]
    for token in tokens:  # each cluster becomes interested in the service, as a query does
        root.call("GET", f"/api/net/service/{name}/instances", token)
    head = root.call("GET", "/api/health", root.orch)["revision"]
    ctx = mp.get_context("spawn")
    seen = ctx.Queue()
    stop = ctx.Event()
    groups = [tokens[p::WATCH_PROCS] for p in range(WATCH_PROCS) if tokens[p::WATCH_PROCS]]
    procs = [
        ctx.Process(target=watch_worker, args=(root.port, g, head, seen, stop), daemon=True)
        for g in groups
    ]
    for proc in procs:
        proc.start()
    samples: list[float] = []  # from the orchestrator's request
    committed: list[float] = []  # from the change's commit (its ``at`` stamp)
    try:
        wait_for(lambda: _watchers(root) >= watchers, 30)
        cpu0 = root.cpu_seconds()
        for k in range(1, changes + 1):
            wait_for(lambda: _watchers(root) >= watchers, 30)
            began = time.monotonic()
            root.call(
                "POST", "/api/net/service/net_deploy_status", root.orch, _report(FAN_JOB, 0, k)
            )
            for _ in range(watchers):
                _who, at, after_commit = seen.get(timeout=10)
                samples.append(at - began)
                committed.append(after_commit)
        wait_for(lambda: _watchers(root) >= watchers, 30)
        # Per answer: the change itself, the answer and the watcher's next request.
        cpu_per_answer = (root.cpu_seconds() - cpu0) / (watchers * changes)
    finally:
        stop.set()
        _end(procs)
    samples.sort()
    committed.sort()
    # The key names, also in smoke mode (10 watchers): ``fanout_watchers`` says which.
    out = {
        "fanout_100_p50_ms": 1000 * _pct(samples, 50),
        "fanout_100_p99_ms": 1000 * _pct(samples, 99),
        "fanout_100_max_ms": 1000 * samples[-1],
        "fanout_100_after_commit_p50_ms": 1000 * _pct(committed, 50),
        "fanout_100_after_commit_p99_ms": 1000 * _pct(committed, 99),
        "fanout_watchers": float(watchers),
        "fanout_server_cpu_per_answer_us": 1e6 * cpu_per_answer,
    }
    say(
        f"managers: fan-out to {watchers} watchers over {changes} changes: from the request "
        f"p50 {out['fanout_100_p50_ms']:.1f} ms, p99 {out['fanout_100_p99_ms']:.1f} ms; "
        f"from the commit p99 {out['fanout_100_after_commit_p99_ms']:.1f} ms; "
        f"{out['fanout_server_cpu_per_answer_us']:.0f} us server CPU per answer"
    )
    return out


def _watchers(root: RootProcess) -> int:
    return root.call("GET", "/api/health", root.orch)["watchers"]


def _end(procs: list[mp.Process]) -> None:
    for proc in procs:
        proc.join(timeout=2)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]
