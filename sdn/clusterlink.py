"""The agent's side of the cluster manager's node API, and the cluster state it keeps on disk.

Calls (``cluster_manager/routes.py``): register (subnets), table queries by name and by IP
(each registers the node's interest), instance reports, interest removal and the watch feed.
Every thread gets its own HTTP session. The token is read on every request (a rotated token
file is picked up). Nothing here retries: the callers decide how to wait.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field

from oaknet import oakestra
from oaknet.client import Client, ClientError, Unavailable
from oaknet.model import ModelError, Service
from sdn.config import AgentConfig

LOG = logging.getLogger(__name__)

STATE_FILE = "cluster-state.json"

__all__ = ["ClientError", "ClusterLink", "ClusterState", "Unavailable"]


class ClusterLink:
    """Calls to one cluster manager as this node (bearer token with role ``node``)."""

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self._local = threading.local()

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = Client(
                self.cfg.cluster_url,
                token=self.cfg.read_token,
                timeout=self.cfg.cluster_timeout_s,
                connect_timeout=min(3.0, self.cfg.cluster_timeout_s),
                retries=0,
            )
            self._local.client = client
        return client

    def register(self) -> dict:
        """Register this node (its underlay address); the cluster's node record with subnets."""
        body = {
            "node_id": self.cfg.node_id,
            "host_ip": self.cfg.node_ip,
            "host_port": self.cfg.reported_host_port,
        }
        doc = self._client().post("/api/net/node/register", body, idempotent=True)
        for key in ("subnet_addr", "subnet_prefix"):
            if not isinstance(doc, dict) or doc.get(key) is None:
                raise Unavailable(f"the cluster's registration answer lacks {key}")
        return doc

    def query_name(self, name: str) -> tuple[Service, int]:
        """The service ``name`` and the revision the answer is at least as new as."""
        path = f"/api/net/node/service/{oakestra.encode_path_name(name)}/instances"
        return _service_answer(self._client().get(path))

    def query_ip(self, address: str) -> tuple[Service, int]:
        """The service that owns a service IP or instance IP, and the answer's revision."""
        path = f"/api/net/node/service/ip/{oakestra.encode_path_name(address)}/instances"
        return _service_answer(self._client().get(path))

    def deployed(self, report: dict) -> None:
        """Report an instance running here: {job_name, instance_number, nsip, nsipv6, ...}."""
        self._client().post("/api/net/node/service/deployed", report, idempotent=True)

    def undeployed(self, job_name: str, number: int) -> None:
        """Report an instance no longer running here."""
        body = {"job_name": job_name, "instance_number": number}
        self._client().post("/api/net/node/service/undeployed", body, idempotent=True)

    def remove_interest(self, job_name: str) -> None:
        """Tell the cluster this node no longer needs ``job_name``."""
        self._client().delete(f"/api/net/node/interest/{oakestra.encode_path_name(job_name)}")

    def watch(self, since: int, timeout: float) -> dict:
        """One long poll of the node feed: {revision, resync, changes, services?}."""
        return self._client().watch("/api/net/node/watch", since, timeout=timeout)


def _service_answer(answer: object) -> tuple[Service, int]:
    if not isinstance(answer, dict) or not isinstance(answer.get("service"), dict):
        raise Unavailable("the cluster's table answer holds no service")
    try:
        svc = Service.from_dict(answer["service"])
        svc.validate()
    except ModelError as exc:
        raise Unavailable(f"the cluster's table answer is invalid: {exc}") from None
    return svc, int(answer.get("revision") or 0)


@dataclass
class ClusterState:
    """What cluster mode keeps in the state dir, so a restart resumes without a flush."""

    node_id: str | None = None
    cluster_url: str | None = None
    subnet_v4: str | None = None
    subnet_v6: str | None = None
    revision: int = 0  # the node feed revision the services below are at
    services: dict[str, dict] = field(default_factory=dict)  # name -> Service.to_dict()
    outbox: list[dict] = field(default_factory=list)  # reports the cluster has not taken yet
    learned_peers: list[str] = field(default_factory=list)  # nodes with a tunnel to this one

    def table(self) -> dict[str, Service]:
        """The saved services as records (unreadable ones are skipped)."""
        out = {}
        for name, doc in self.services.items():
            try:
                out[name] = Service.from_dict(doc)
            except ModelError as exc:
                LOG.warning("saved service %s unreadable: %s", name, exc)
        return out


def load_cluster_state(state_dir: str) -> ClusterState:
    """The saved cluster state, or an empty one."""
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return ClusterState(**{k: v for k, v in data.items() if k != "version"})
    except FileNotFoundError:
        return ClusterState()
    except (OSError, ValueError, TypeError) as exc:
        LOG.warning("cluster state %s unreadable (%s); starting without it", path, exc)
        return ClusterState()


def save_cluster_state(state_dir: str, state: ClusterState) -> None:
    """Write the cluster state atomically."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".cluster-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"version": 1, **asdict(state)}, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, os.path.join(state_dir, STATE_FILE))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
