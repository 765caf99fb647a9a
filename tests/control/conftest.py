"""Fixtures for the managers' tests: a root manager served by waitress on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from oaknet.auth import ADMIN, CLUSTER, NODE, ORCHESTRATOR, READER
from oaknet.client import Client
from oaknet.config import AuthConfig, FeedConfig, ServerConfig, StoreConfig
from oaknet.serving import ServerThread, stop_app
from root_manager.app import create_app
from root_manager.config import RootConfig

REPO = Path(__file__).resolve().parents[2]

# Static tokens of the test deployment: token -> principal.
TOKENS = {
    "tok-orchestrator": {"subject": "system-manager", "roles": [ORCHESTRATOR]},
    "tok-c1": {"subject": "c1", "roles": [CLUSTER]},
    "tok-c2": {"subject": "c2", "roles": [CLUSTER]},
    "tok-c3": {"subject": "c3", "roles": [CLUSTER]},
    "tok-reader": {"subject": "dashboard", "roles": [READER]},
    "tok-admin": {"subject": "ops", "roles": [ADMIN]},
    "tok-node": {"subject": "worker-1", "roles": [NODE]},
}
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"


def root_config(db: Path, **feed) -> RootConfig:
    """A root config on loopback, any port, SQLite file ``db``, the test tokens and a JWT key."""
    cfg = RootConfig(
        server=ServerConfig(host="127.0.0.1", port=0, threads=48),
        store=StoreConfig(url=f"sqlite:///{db}"),
        auth=AuthConfig(tokens=dict(TOKENS), jwt_algorithm="HS256", jwt_secret=JWT_SECRET),
        feed=FeedConfig(poll_interval=0.05, **feed),
    )
    cfg.validate()
    return cfg


class ManagerServer:
    """A manager app served by waitress in this process, restartable on its port and store."""

    state_key = ""  # the app extension holding the manager's state
    create: Callable = staticmethod(lambda cfg: None)  # the manager's app factory

    def __init__(self, cfg):
        self.cfg = cfg
        self.app = None
        self.srv = None
        self.start()

    def start(self) -> None:
        self.app = self.create(self.cfg)
        self.srv = ServerThread(self.app, self.cfg.server).start()
        self.cfg.server.port = self.srv.port  # a restart keeps the address its callers know
        self.url = f"http://127.0.0.1:{self.srv.port}"
        self.started()

    def started(self) -> None:
        """Called after each start (clients of the new server)."""

    def stop(self) -> None:
        if self.app is not None:
            stop_app(self.app, self.srv)  # as the production server stops
            self.app = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, token: str | None) -> Client:
        return Client(self.url, token=token, timeout=10, retries=0)

    @property
    def state(self):
        return self.app.extensions[self.state_key]

    @property
    def db(self) -> str:
        return self.cfg.store.url[len("sqlite://") :]


class RootServer(ManagerServer):
    """A running root manager (in this process) and clients for each test principal."""

    state_key = "oaknet_root"
    create = staticmethod(create_app)

    def started(self) -> None:
        self.orch = self.client("tok-orchestrator")
        self.c1 = self.client("tok-c1")
        self.c2 = self.client("tok-c2")
        self.c3 = self.client("tok-c3")
        self.reader = self.client("tok-reader")


@pytest.fixture
def root(tmp_path):
    """A fresh root manager with clusters c1, c2 and c3 registered."""
    server = RootServer(root_config(tmp_path / "root.db"))
    try:
        for n in (1, 2, 3):
            server.orch.post(
                "/api/net/cluster",
                {"cluster_id": f"c{n}", "cluster_address": "127.0.0.1", "cluster_port": 10110 + n},
            )
        yield server
    finally:
        server.stop()


def dump(db: str) -> dict:
    """Everything the SQLite store holds, to compare before and after a refused request."""
    conn = sqlite3.connect(db)
    try:
        return {
            "docs": conn.execute("SELECT kind, key, doc FROM docs ORDER BY kind, key").fetchall(),
            "terms": conn.execute("SELECT * FROM terms ORDER BY kind, term, key").fetchall(),
            "changes": conn.execute("SELECT revision FROM changes ORDER BY revision").fetchall(),
        }
    finally:
        conn.close()


def deploy_body(job_id: str, app: str = "shop", svc: str = "web", **extra) -> dict:
    """The system manager's body of POST /api/net/service/deploy."""
    return {
        "_id": job_id,
        "deployment_descriptor": {
            "app_name": app,
            "app_ns": "default",
            "service_name": svc,
            "service_ns": "default",
            "microservice_name": svc,
            "microservice_namespace": "default",
            "applicationID": f"app-{app}",
            **extra,
        },
    }


@contextlib.contextmanager
def manager_process(module: str, name: str, tmp_path: Path, config: dict):
    """``python -m <module>`` as a real process with ``config``; yields its base URL."""
    with running_manager(module, name, tmp_path, config) as (url, _proc):
        yield url


@contextlib.contextmanager
def running_manager(module: str, name: str, tmp_path: Path, config: dict):
    """``python -m <module>`` as a real process with ``config``; yields (base URL, Popen).

    The server section is filled in (loopback, any port, a port file to learn it), the output
    goes to ``<name>.log``, and the process gets SIGINT (then SIGKILL) when the block ends.
    """
    cfg_file = tmp_path / f"{name}.yaml"
    port_file = tmp_path / f"{name}.port"
    log_path = tmp_path / f"{name}.log"
    server = {"host": "127.0.0.1", "port": 0, "port_file": str(port_file)}
    config = {**config, "server": {**server, **config.get("server", {})}}
    cfg_file.write_text(yaml.safe_dump(config))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(cfg_file)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            deadline = time.monotonic() + 20
            while not port_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start: {log_path.read_text()}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{int(port_file.read_text())}", proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def root_process(tmp_path: Path, db: Path, name: str):
    """``python -m root_manager`` as a real process on the shared SQLite file ``db``."""
    config = {
        "server": {"threads": 32},
        "store": {"url": f"sqlite:///{db}"},
        "auth": {"tokens": TOKENS},
        "feed": {"poll_interval": 0.05},
        "log_level": "WARNING",
    }
    return manager_process("root_manager", name, tmp_path, config)


def app_routes(app, sample_args: dict):
    """Every (rule, method, concrete path) of a Flask app, path arguments filled from samples."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", sample_args[arg])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method, path
