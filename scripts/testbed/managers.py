"""Root and cluster manager processes on a testbed host, driven from inside its namespace.

``Managers`` runs a root manager and cluster manager ``c1`` in host ``mgr`` (192.0.2.100):
the root on that namespace's loopback, the cluster manager on its underlay address, where
agents in the worker namespaces reach it. Calls to the managers go through a thread that
entered the ``mgr`` namespace, so nothing is sent from this machine's own namespace.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from oaknet.auth import CLUSTER, NODE, ORCHESTRATOR, issue_jwt
from oaknet.client import Client, ClientError, Unavailable
from ovs_setup.netns import open_netns, setns

LOG = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MGR_IP = "192.0.2.100"
ROOT_PORT = 10099
CLUSTER_PORT = 10110
CLUSTER_ID = "c1"


class InNetns:
    """A thread inside a network namespace: calls made through it use that namespace."""

    def __init__(self, netns: str):
        self._fd = open_netns(netns)
        self._pool = ThreadPoolExecutor(1, initializer=setns, initargs=(self._fd,))

    def call(self, func, *args, **kwargs):
        """Run ``func`` in the namespace and return its result (or raise its error)."""
        return self._pool.submit(func, *args, **kwargs).result()

    def close(self) -> None:
        """Stop the thread."""
        self._pool.shutdown(wait=True)
        os.close(self._fd)


class Managers:
    """A root manager and cluster manager ``c1`` in host ``mgr`` of the testbed."""

    def __init__(self, tb, workers: list[str], cluster_overrides: dict | None = None):
        self.tb = tb
        self.dir = Path(tb.base_dir) / "managers"
        self.dir.mkdir(exist_ok=True)
        self.host = tb.add_host("mgr", MGR_IP)
        self.ns = InNetns(self.host.netns)
        self.orch_token = secrets.token_urlsafe(16)
        self.cluster_token = secrets.token_urlsafe(16)
        self.jwt_secret = secrets.token_urlsafe(36)
        self.node_tokens = {w: issue_jwt(self.jwt_secret, w, [NODE], ttl=3600) for w in workers}
        self.root_url = f"http://127.0.0.1:{ROOT_PORT}"
        self.cluster_url = f"http://{MGR_IP}:{CLUSTER_PORT}"
        self._env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.root_proc = self._start("root", self._root_config(), self.root_url)
        self.orch = Client(self.root_url, token=self.orch_token, timeout=10, retries=0)
        self.call(
            "post",
            "/api/net/cluster",
            {"cluster_id": CLUSTER_ID, "cluster_address": MGR_IP, "cluster_port": CLUSTER_PORT},
        )
        self._cluster_cfg = self._cluster_config(cluster_overrides or {})
        self.cluster_proc = self._start("cluster", self._cluster_cfg, self.cluster_url)
        self.cluster_reader = Client(
            self.cluster_url, token="reader-" + self.orch_token, timeout=10, retries=0
        )

    # -- processes -------------------------------------------------------------------------

    def _root_config(self) -> dict:
        return {
            "server": {"host": "127.0.0.1", "port": ROOT_PORT, "threads": 32},
            "store": {"url": f"sqlite:///{self.dir / 'root.db'}"},
            "auth": {
                "tokens": {
                    self.orch_token: {"subject": "orchestrator", "roles": [ORCHESTRATOR]},
                    self.cluster_token: {"subject": CLUSTER_ID, "roles": [CLUSTER]},
                }
            },
            "feed": {"poll_interval": 0.05},
            "log_level": "INFO",
        }

    def _cluster_config(self, overrides: dict) -> dict:
        return {
            "cluster_id": CLUSTER_ID,
            "server": {"host": MGR_IP, "port": CLUSTER_PORT, "threads": 32},
            "store": {"url": f"sqlite:///{self.dir / 'cluster.db'}"},
            "auth": {
                "tokens": {"reader-" + self.orch_token: {"subject": "test", "roles": ["reader"]}},
                "jwt_algorithm": "HS256",
                "jwt_secret": self.jwt_secret,
            },
            "feed": {"poll_interval": 0.05},
            "root": {
                "url": self.root_url,
                "token": self.cluster_token,
                "watch_timeout": 2,
                "backoff": 0.1,
                "max_backoff": 0.5,
            },
            "log_level": "INFO",
            **overrides,
        }

    def _start(self, name: str, config: dict, url: str):
        path = self.dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        module = "root_manager" if name == "root" else "cluster_manager"
        argv = [sys.executable, "-m", module, "--config", str(path)]
        proc = self.tb.run_in(self.host, argv, background=True, env=self._env)
        probe = Client(url, timeout=2, retries=0)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.ns.call(probe.get, "/api/health")
                LOG.info("%s manager answers at %s (pid %d)", name, url, proc.pid)
                return proc
            except (ClientError, Unavailable):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} manager did not start (log in {self.tb.base_dir})")
                time.sleep(0.1)

    def stop_cluster(self) -> None:
        """Stop the cluster manager process (its store stays)."""
        self.tb.stop_process(self.cluster_proc)
        self.cluster_proc = None

    def start_cluster(self) -> None:
        """Start the cluster manager again on the same address and store."""
        self.cluster_proc = self._start("cluster", self._cluster_cfg, self.cluster_url)

    def stop_root(self) -> None:
        """Stop the root manager process (its store stays)."""
        self.tb.stop_process(self.root_proc)
        self.root_proc = None

    def start_root(self) -> None:
        """Start the root manager again on the same address and store."""
        self.root_proc = self._start("root", self._root_config(), self.root_url)

    def close(self) -> None:
        """Stop the namespace thread (the testbed stops the processes)."""
        self.ns.close()

    # -- orchestrator side -----------------------------------------------------------------

    def call(self, method: str, path: str, body=None):
        """One orchestrator call to the root manager."""
        if method == "get":
            return self.ns.call(self.orch.get, path)
        if method == "delete":
            return self.ns.call(self.orch.delete, path)
        return self.ns.call(self.orch.post, path, body)

    def deploy_service(self, job_id: str, name: str) -> dict:
        """Deploy ``app.ns.svc.svcns`` at the root; the job document."""
        app, app_ns, svc, svc_ns = name.split(".")
        descriptor = {
            "app_name": app,
            "app_ns": app_ns,
            "service_name": svc,
            "service_ns": svc_ns,
            "microservice_name": svc,
            "microservice_namespace": svc_ns,
        }
        body = {"_id": job_id, "deployment_descriptor": descriptor}
        return self.call("post", "/api/net/service/deploy", body)

    def deploy_instance(self, job_id: str, number: int, worker: str) -> dict:
        """Schedule instance ``number`` on ``worker`` (cluster c1); the job document."""
        body = {
            "_id": job_id,
            "instance_number": number,
            "cluster_id": CLUSTER_ID,
            "worker_id": worker,
        }
        return self.call("post", "/api/net/instance/deploy", body)

    def job(self, name: str) -> dict:
        """The root's job document of service ``name``."""
        return self.call("get", f"/api/net/service/{name.replace('.', '_')}/instances")

    def undeploy_instance(self, job_id: str, number: int) -> None:
        """Remove instance ``number`` at the root."""
        self.call("delete", f"/api/net/{job_id}/{number}")

    def cluster_requests(self, route: str) -> int:
        """How many requests the cluster manager served on ``route`` (its /metrics)."""
        text = self.ns.call(self.cluster_reader.get, "/metrics")
        total = 0
        for line in text.splitlines():
            m = re.match(r'\w+_http_requests_total\{[^}]*route="([^"]+)"[^}]*\} (\d+)', line)
            if m and m.group(1) == route:
                total += int(m.group(2))
        return total


def service_ips(job: dict) -> dict[str, str]:
    """{"rr": v4, "rr6": v6, ...} of a job document's service_ip_list."""
    out = {}
    for entry in job["service_ip_list"]:
        key = {"RR": "rr", "Closest": "closest"}[entry["IpType"]]
        out[key], out[key + "6"] = entry["Address"], entry["Address_v6"]
    return out
