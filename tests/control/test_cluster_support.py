"""Shared pieces of the cluster and hierarchy tests: servers, fake nodes, waiting (no tests).

A fake node is an HTTP client written here, speaking the node API the way an agent does; it
is not a mock of oaknet code.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster_manager.app import create_app
from cluster_manager.config import ClusterConfig, RootLinkConfig
from oaknet.auth import ADMIN, NODE, ORCHESTRATOR, READER
from oaknet.client import Client, ClientError, Unavailable
from oaknet.config import AuthConfig, FeedConfig, ServerConfig, StoreConfig
from tests.control.conftest import ManagerServer, RootServer, deploy_body, manager_process

NODES = ("a1", "a2", "a3", "b1", "b2", "b3", *(f"n{i:02d}" for i in range(12)))
# The cluster managers' own credentials: the orchestrator side, a reader, an admin, nodes.
CLUSTER_TOKENS = {
    "tok-cm-orch": {"subject": "cluster-orchestrator", "roles": [ORCHESTRATOR]},
    "tok-cm-reader": {"subject": "dashboard", "roles": [READER]},
    "tok-cm-admin": {"subject": "ops", "roles": [ADMIN]},
    **{f"tok-{n}": {"subject": n, "roles": [NODE]} for n in NODES},
}


def cluster_config(db: Path, cluster_id: str, root_url: str, **root) -> ClusterConfig:
    """A cluster config on loopback, any port, SQLite ``db``, following ``root_url``."""
    cfg = ClusterConfig(
        cluster_id=cluster_id,
        server=ServerConfig(host="127.0.0.1", port=0, threads=48),
        store=StoreConfig(url=f"sqlite:///{db}"),
        auth=AuthConfig(tokens=dict(CLUSTER_TOKENS)),
        feed=FeedConfig(poll_interval=0.05),
        root=RootLinkConfig(
            url=root_url,
            token=f"tok-{cluster_id}",  # the root's test token of this cluster
            timeout=5,
            retries=1,
            watch_timeout=0.5,
            backoff=0.05,
            max_backoff=0.3,
            **root,
        ),
    )
    cfg.validate()
    return cfg


class ClusterServer(ManagerServer):
    """A running cluster manager (in this process), restartable on the same port and store."""

    state_key = "oaknet_cluster"
    create = staticmethod(create_app)

    def started(self) -> None:
        self.orch = self.client("tok-cm-orch")
        self.reader = self.client("tok-cm-reader")

    def node(self, name: str) -> FakeNode:
        return FakeNode(self, name)

    def synced(self, root: RootServer) -> bool:
        """True once the follower has applied the root's feed up to the root's head."""
        return self.state.cache.position() >= root.state.feed.store.head()


class FakeNode:
    """A worker node's calls to its cluster manager, over HTTP with the node's token."""

    def __init__(self, cluster: ClusterServer, name: str):
        self.cluster = cluster
        self.name = name
        self.api = Client(cluster.url, token=f"tok-{name}", timeout=10, retries=2, backoff=0.1)
        self.changes: list[dict] = []
        self.resyncs = 0
        self.revision = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, host_ip: str | None = None) -> dict:
        return self.api.post("/api/net/node/register", {"host_ip": host_ip} if host_ip else {})

    def query(self, name: str) -> dict:
        return self.api.get(f"/api/net/node/service/{name.replace('.', '_')}/instances")

    def query_ip(self, address: str) -> dict:
        return self.api.get(f"/api/net/node/service/ip/{address.replace('.', '_')}/instances")

    def deployed(self, name: str, number: int, nsip: str, nsipv6: str, host_ip: str) -> dict:
        """The reference's ``service/deployed`` payload."""
        return self.api.post(
            "/api/net/node/service/deployed",
            {
                "appname": name,
                "status": "DEPLOYED",
                "instance_number": number,
                "nsip": nsip,
                "nsipv6": nsipv6,
                "host_ip": host_ip,
                "host_port": "50103",
            },
        )

    def undeployed(self, name: str, number: int) -> dict:
        """The reference's ``service/undeployed`` payload."""
        return self.api.post(
            "/api/net/node/service/undeployed", {"appname": name, "instance_number": number}
        )

    def watch_once(self, since: int, timeout: float = 0) -> dict:
        return self.api.watch("/api/net/node/watch", since, timeout)

    def start_watching(self, since: int | None = None) -> None:
        """Collect the node's feed on a thread from ``since`` (default: now), riding restarts."""
        self.revision = self.watch_once(0)["revision"] if since is None else since
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop_watching(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(10)

    def instances_seen(self, name: str) -> list[list[int]]:
        """The instance numbers of ``name`` in each change this node got, in order."""
        return [
            sorted(i["number"] for i in c["doc"]["service"]["instances"])
            for c in self.changes
            if c["subject"] == name and c["op"] == "put"
        ]

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                out = self.api.watch("/api/net/node/watch", self.revision, timeout=0.5)
            except (ClientError, Unavailable):
                time.sleep(0.1)  # the cluster manager restarts: keep the revision, retry
                continue
            if out["resync"]:
                self.resyncs += 1
            self.changes.extend(out["changes"])
            self.revision = out["revision"]


def wait_until(check: Callable[[], object], timeout: float = 5.0, what: str = "") -> object:
    """Poll ``check`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}")
        time.sleep(0.02)


def dump_all(db: str) -> dict:
    """Every row of a SQLite store (documents, terms, changes, sequence)."""
    conn = sqlite3.connect(db)
    try:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("docs", "terms", "changes", "sqlite_sequence")
        }
    finally:
        conn.close()


@pytest.fixture(name="c1")
def c1_fixture(tmp_path, root):
    """Cluster manager c1 following the ``root`` fixture's root manager."""
    server = ClusterServer(cluster_config(tmp_path / "c1.db", "c1", root.url))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="c2")
def c2_fixture(tmp_path, root):
    """Cluster manager c2 following ``root``."""
    server = ClusterServer(cluster_config(tmp_path / "c2.db", "c2", root.url))
    try:
        yield server
    finally:
        server.stop()


def deploy_service(root: RootServer, job_id: str, app: str) -> dict:
    """Deploy ``app.default.web.default`` at the root; its job document."""
    return root.orch.post("/api/net/service/deploy", deploy_body(job_id, app=app))


def deploy_instance(
    root: RootServer,
    job_id: str,
    number: int,
    cluster: str,
    node: str | None = None,
    host_ip: str | None = None,
) -> dict:
    """Schedule an instance at the root (optionally on a node); the job document."""
    body = {"_id": job_id, "instance_number": number, "cluster_id": cluster}
    if node:
        body.update(worker_id=node, host_ip=host_ip)
    return root.orch.post("/api/net/instance/deploy", body)


def cluster_process(tmp_path: Path, cluster_id: str, root_url: str):
    """``python -m cluster_manager`` as a real process; yields its base URL."""
    config = {
        "cluster_id": cluster_id,
        "server": {"threads": 16},
        "store": {"url": f"sqlite:///{tmp_path / cluster_id}.db"},
        "auth": {"tokens": CLUSTER_TOKENS},
        "root": {"url": root_url, "token": f"tok-{cluster_id}", "watch_timeout": 0.5},
        "log_level": "INFO",
    }
    return manager_process("cluster_manager", cluster_id, tmp_path, config)
