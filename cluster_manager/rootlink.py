"""Calls from the cluster manager to the root manager (oakestra-net's paths and bodies)."""

from __future__ import annotations

import logging
from typing import Any

from cluster_manager.config import RootLinkConfig
from oaknet import oakestra
from oaknet.client import Client, ClientError, Unavailable
from oaknet.web import ApiError

LOG = logging.getLogger(__name__)

__all__ = ["ClientError", "RootLink", "RootUnregistered", "Unavailable", "upstream_error"]


class RootUnregistered(Exception):
    """The root does not know this cluster (it was never registered there)."""


class RootLink:
    """The root manager's API as the cluster sees it; errors are ClientError/Unavailable."""

    def __init__(self, cfg: RootLinkConfig, cluster_id: str):
        self.cfg = cfg
        self.cluster_id = cluster_id
        self.client = Client(
            cfg.url, token=cfg.read_token, timeout=cfg.timeout, retries=cfg.retries
        )

    def close(self) -> None:
        """Close pooled connections."""
        self.client.close()

    def register(self, address: str, port: int) -> None:
        """Register this cluster at the root (the reference leaves this to the orchestrator)."""
        self.client.post(
            "/api/net/cluster",
            {"cluster_id": self.cluster_id, "cluster_address": address, "cluster_port": port},
            idempotent=True,
        )
        LOG.info(
            "registered at the root as cluster %s (%s port %d)", self.cluster_id, address, port
        )

    def job_by_name(self, job_name: str) -> dict:
        """The job document of ``job_name``; the root registers this cluster's interest."""
        return self._query(f"/api/net/service/{oakestra.encode_path_name(job_name)}/instances")

    def job_by_ip(self, address: str) -> dict:
        """The job document owning a service or instance IP; registers interest too."""
        return self._query(f"/api/net/service/ip/{oakestra.encode_path_name(address)}/instances")

    def report(self, job_id: str, instances: list[dict]) -> dict:
        """Forward where instances run (``net_deploy_status``); the updated job document."""
        return self.client.post(
            "/api/net/service/net_deploy_status",
            {"job_id": job_id, "instances": instances},
            idempotent=True,
        )

    def remove_interest(self, job_name: str) -> None:
        """Tell the root no node of this cluster needs ``job_name`` any more."""
        try:
            self.client.delete(f"/api/net/interest/{oakestra.encode_path_name(job_name)}")
        except ClientError as exc:
            if exc.status == 404 and exc.field == "cluster_id":
                raise RootUnregistered(exc.detail) from None
            raise

    def subnet(self, node_id: str) -> dict:
        """A node subnet pair; the root hands the same node the same pair again."""
        answer = self.client.get("/api/net/subnet", {"node": node_id})
        for key in ("subnet_addr", "subnet_addr_v6"):
            if not isinstance(answer, dict) or not isinstance(answer.get(key), str):
                raise Unavailable(f"the root's subnet answer lacks {key}")
        return answer

    def release_subnet(self, address: str) -> None:
        """Give a node's subnet pair back to the root."""
        self.client.delete(f"/api/net/subnet/{oakestra.encode_path_name(address)}")

    def watch(self, since: int, timeout: float) -> dict:
        """One long-poll of the root's feed for this cluster's interests."""
        return self.client.watch("/api/net/watch", since, timeout=timeout)

    def _query(self, path: str) -> dict:
        try:
            answer: Any = self.client.get(path)
        except ClientError as exc:
            if exc.status == 404 and exc.field == "cluster_id":
                raise RootUnregistered(exc.detail) from None
            raise
        if not isinstance(answer, dict) or "job_name" not in answer:
            raise Unavailable(f"GET {path}: the root's answer is not a job document")
        return answer


def upstream_error(exc: Exception) -> ApiError:
    """The answer to give when a call to the root failed."""
    if isinstance(exc, RootUnregistered):
        return ApiError(502, "root refused", f"this cluster is not registered at the root: {exc}")
    if isinstance(exc, Unavailable):
        return ApiError(503, "root unavailable", str(exc))
    if isinstance(exc, ClientError):
        if exc.status in (403, 404, 409):
            return ApiError(exc.status, exc.error, f"root: {exc.detail}", exc.field)
        return ApiError(
            502, "root refused", f"root answered {exc.status}: {exc.detail}", exc.field
        )
    return ApiError(502, "root refused", str(exc))
