"""The demo's hierarchy on the testbed: root and cluster managers, workers with OVS and agents."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import testbed as tb_lib
import yaml
from testbed.agents import wait_until

from demo import topology as topo
from demo.apis import ManagerApi, NetnsThread, NodeApi
from oaknet.auth import CLUSTER, NODE, ORCHESTRATOR, issue_jwt

LOG = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 40.0  # seconds for a process to answer; generous on a busy 2-core machine
NODE_TOKEN_TTL = 24 * 3600


@dataclass
class Tokens:
    """This run's credentials, generated at start and written to the run directory."""

    orchestrator: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    clusters: dict[str, str] = field(default_factory=dict)  # root's token of each cluster
    jwt_secrets: dict[str, str] = field(default_factory=dict)  # each cluster's HS256 key
    nodes: dict[str, str] = field(default_factory=dict)  # JWTs of the worker nodes

    @classmethod
    def generate(cls) -> Tokens:
        """Fresh tokens: static ones for orchestrator and clusters, JWTs for the nodes."""
        tokens = cls()
        for cluster in topo.CLUSTERS:
            tokens.clusters[cluster.cluster_id] = secrets.token_urlsafe(24)
            key = secrets.token_urlsafe(36)
            tokens.jwt_secrets[cluster.cluster_id] = key
            for worker in cluster.workers:
                tokens.nodes[worker] = issue_jwt(key, worker, [NODE], ttl=NODE_TOKEN_TTL)
        return tokens


@dataclass
class Started:
    """A process the demo started: what it is, its PID and its log."""

    role: str
    pid: int
    log: str
    proc: subprocess.Popen = field(repr=False)
    output: str | None = None  # stdout/stderr, when the log is a separate file

    def failure(self) -> str:
        """Why it exited, from the ends of its log and output."""
        text = tail(self.log)
        if self.output and self.output != self.log:
            text += tail(self.output)
        return f"{self.role} exited with {self.proc.returncode}: {text.strip() or '(no output)'}"

    def last_words(self) -> str:
        """The end of its log, for an error about a process that runs but is not ready."""
        return f"{self.role}'s log ends: {tail(self.log).strip() or '(empty)'}"


class Hierarchy:
    """Builds and runs the demo's managers and nodes in an entered ``testbed.Testbed``."""

    def __init__(self, tb: tb_lib.Testbed):
        self.tb = tb
        self.dir = Path(tb.base_dir)
        self.tokens = Tokens.generate()
        self.hosts: dict[str, tb_lib.Host] = {}
        self.workers: dict[str, tb_lib.Worker] = {}
        self.started: list[Started] = []
        self.orch_ns: NetnsThread | None = None
        self.root_api: ManagerApi | None = None
        self.cluster_apis: dict[str, ManagerApi] = {}
        self.nodes: dict[str, NodeApi] = {}
        self._env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'scripts'}"}

    # -- network ---------------------------------------------------------------------------

    def build_network(self) -> None:
        """The underlay with the managers' hosts and the worker nodes, each with its OVS."""
        for spec in (topo.ROOT, *(c.manager for c in topo.CLUSTERS)):
            self.hosts[spec.name] = self.tb.add_host(spec.name, spec.ip4, spec.ip6)
        for name, spec in topo.WORKERS.items():
            self.workers[name] = self.tb.add_worker(name, spec.host.ip4, spec.host.ip6)
        for a, b in itertools.combinations(sorted(self.workers), 2):
            self.tb.set_delay(self.workers[a], self.workers[b], topo.delay_ms(a, b))
        self._write_tokens()
        # The orchestrator's calls leave from the root manager's host, over the underlay.
        self.orch_ns = NetnsThread(self.hosts[topo.ROOT.name].netns)

    def _write_tokens(self) -> None:
        """Tokens go to files only the owner reads (for curl examples with --keep)."""
        tdir = self.dir / "tokens"
        tdir.mkdir(mode=0o700, exist_ok=True)
        files = {"orchestrator": self.tokens.orchestrator}
        files.update({f"cluster-{c}": t for c, t in self.tokens.clusters.items()})
        files.update({f"node-{n}": t for n, t in self.tokens.nodes.items()})
        for name, token in files.items():
            path = tdir / f"{name}.token"
            path.write_text(token + "\n")
            path.chmod(0o600)

    # -- managers --------------------------------------------------------------------------

    def start_managers(self) -> None:
        """The root manager, then both cluster managers; wait until each answers."""
        root = self._spawn_manager("root_manager", topo.ROOT.name, self._root_config())
        clusters = [
            self._spawn_manager("cluster_manager", c.manager.name, self._cluster_config(c))
            for c in topo.CLUSTERS
        ]
        self.root_api = ManagerApi(
            self.orch_ns,
            f"http://{topo.ROOT.ip4}:{topo.ROOT_PORT}",
            self.tokens.orchestrator,
            "root manager",
        )
        self._wait_health(self.root_api, root)
        for cluster, proc in zip(topo.CLUSTERS, clusters):
            api = ManagerApi(
                self.orch_ns,
                cluster.url,
                self.tokens.orchestrator,
                f"cluster manager {cluster.cluster_id}",
            )
            self.cluster_apis[cluster.cluster_id] = api
            self._wait_health(api, proc)
        # A cluster registers itself at the root, then follows the root's feed.
        for cluster_id, api in self.cluster_apis.items():
            self._wait(
                lambda api=api: api.get("/api/health")["root"]["connected"],
                f"cluster {cluster_id} to register at the root and follow it",
            )

    def _root_config(self) -> dict:
        tokens = {self.tokens.orchestrator: {"subject": "orchestrator", "roles": [ORCHESTRATOR]}}
        for cluster_id, token in self.tokens.clusters.items():
            tokens[token] = {"subject": cluster_id, "roles": [CLUSTER]}
        return {
            "server": {"host": topo.ROOT.ip4, "port": topo.ROOT_PORT, "threads": 32},
            "store": {"url": f"sqlite:///{self.dir / 'root' / 'root.db'}"},
            "auth": {"tokens": tokens},
            "feed": {"poll_interval": 0.05},
            "log_level": "INFO",
        }

    def _cluster_config(self, cluster: topo.ClusterSpec) -> dict:
        cid = cluster.cluster_id
        return {
            "cluster_id": cid,
            "server": {"host": cluster.manager.ip4, "port": topo.CLUSTER_PORT, "threads": 32},
            "store": {"url": f"sqlite:///{self.dir / cluster.manager.name / 'cluster.db'}"},
            "auth": {
                "tokens": {
                    self.tokens.orchestrator: {"subject": "orchestrator", "roles": [ORCHESTRATOR]}
                },
                "jwt_algorithm": "HS256",
                "jwt_secret": self.tokens.jwt_secrets[cid],
            },
            "feed": {"poll_interval": 0.05},
            "root": {
                "url": f"http://{topo.ROOT.ip4}:{topo.ROOT_PORT}",
                "token": self.tokens.clusters[cid],
                "watch_timeout": 20,
                "advertise_address": cluster.manager.ip4,
                "advertise_port": topo.CLUSTER_PORT,
            },
            "log_level": "INFO",
        }

    def _spawn_manager(self, module: str, host: str, config: dict) -> Started:
        run_dir = self.dir / host
        run_dir.mkdir(mode=0o750, exist_ok=True)
        path = run_dir / f"{module}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)  # it holds tokens
        argv = [sys.executable, "-m", module, "--config", str(path)]
        return self._spawn(f"{module} ({host})", host, argv, run_dir / f"{module}.log")

    def _spawn(self, role: str, host: str, argv: list[str], log: Path) -> Started:
        proc = self.tb.run_in(self.tb.hosts[host], argv, background=True, env=self._env)
        # The testbed names the log by namespace and program; a stable name is easier to find.
        actual = self._log_of(host, argv)
        if actual and not log.exists():
            log.symlink_to(actual)
        started = Started(role, proc.pid, str(log), proc)
        self.started.append(started)
        LOG.info("started %s: pid %d", role, proc.pid)
        return started

    def _log_of(self, host: str, argv: list[str]) -> str | None:
        netns = self.tb.hosts[host].netns
        candidates = sorted(
            self.dir.glob(f"{netns}-{os.path.basename(argv[0])}-*.log"), key=os.path.getmtime
        )
        return str(candidates[-1]) if candidates else None

    def _wait_health(self, api: ManagerApi, proc: Started) -> None:
        def healthy() -> bool:
            if proc.proc.poll() is not None:
                raise RuntimeError(proc.failure())
            try:
                api.where.call(api.client.session.get, f"{api.base_url}/api/health", timeout=2)
            except OSError:
                return False
            return True

        self._wait(healthy, f"{proc.role} to answer", explain=proc.last_words)

    def _wait(
        self,
        check: Callable[[], object],
        what: str,
        timeout: float = START_TIMEOUT,
        explain: Callable[[], str] | None = None,
    ):
        return wait_until(what, check, timeout, explain=explain)

    # -- nodes -----------------------------------------------------------------------------

    def start_agents(self) -> None:
        """One node agent per worker, in its namespace; wait until each reconciled its OVS."""
        procs = {}
        for name in self.workers:
            cfg = self._agent_config(name)
            run_dir = self.dir / f"{name}-agent"
            run_dir.mkdir(mode=0o750, exist_ok=True)
            path = run_dir / "agent.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            path.chmod(0o600)
            log = run_dir / "agent.log"
            argv = [sys.executable, "-m", "sdn", "--config", str(path), "--log-file", str(log)]
            proc = self.tb.run_in(self.workers[name], argv, background=True, env=self._env)
            procs[name] = Started(
                f"agent ({name})", proc.pid, str(log), proc, self._log_of(name, argv)
            )
            self.started.append(procs[name])
            self.nodes[name] = NodeApi(cfg["socket"])
        for name, proc in procs.items():
            self._wait(
                lambda n=name, p=proc: self._reconciled(n, p),
                f"agent {name} to start",
                explain=proc.last_words,
            )

    def _agent_config(self, name: str) -> dict:
        worker = self.workers[name]
        run_dir = self.dir / f"{name}-agent"
        cluster = topo.cluster_of(name)
        return {
            "node_name": name,
            "node_ip": worker.ip4,
            "cluster_url": cluster.url,
            "node_token_file": str(self.dir / "tokens" / f"node-{name}.token"),
            "bridge": worker.bridge,
            "ovs_db": worker.db_url,
            "ovs_run_dir": worker.ovs.run_dir,
            "datapath_type": worker.ovs.datapath_type,
            "socket": str(run_dir / "agent.sock"),
            "state_dir": str(run_dir / "state"),
            "rtt_interval_s": 0.5,
            "negative_cache_s": 5,
            "log_level": "INFO",
        }

    def _reconciled(self, name: str, proc: Started) -> bool:
        if proc.proc.poll() is not None:
            raise RuntimeError(proc.failure())
        try:
            return bool(self.nodes[name].health()["switch"]["reconciled"])
        except (OSError, KeyError, RuntimeError):
            return False

    def wait_peers(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every node has a tunnel to every other node (they all share the client
        service), each forwarding (BFD up) with a measured RTT."""

        def up(name: str) -> bool:
            peers = self.nodes[name].health().get("peers", [])
            return len(peers) == len(self.workers) - 1 and all(
                p["bfd"].get("forwarding") and p["rtt_ms"] is not None for p in peers
            )

        for name in self.workers:
            self._wait(lambda n=name: up(n), f"the tunnels of {name}", timeout)

    # -- views -----------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Every PID the demo started or that runs the nodes' OVS."""
        out = [s.pid for s in self.started]
        for worker in self.workers.values():
            out += [
                p for p in (worker.ovs.pid("ovsdb-server"), worker.ovs.pid("ovs-vswitchd")) if p
            ]
        return out

    def stop(self, timeout: float = 3.0) -> None:
        """Stop every process the demo started, all at once (each may take seconds alone)."""
        for started in self.started:
            if started.proc.poll() is None:
                try:
                    os.killpg(started.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for started in self.started:
            try:
                started.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOG.info(
                    "%s did not stop on SIGTERM within %.0f s; killing it", started.role, timeout
                )
            self.tb.stop_process(started.proc)

    def close(self) -> None:
        """Close the API clients and the namespace thread (the testbed stops the rest)."""
        for api in [self.root_api, *self.cluster_apis.values()]:
            if api is not None:
                try:
                    api.close()
                except Exception:
                    LOG.debug("closing %s failed", api.name, exc_info=True)
        if self.orch_ns is not None:
            self.orch_ns.close()
            self.orch_ns = None


def tail(path: str, lines: int = 20) -> str:
    """The end of a log file, for error messages."""
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no log)"
