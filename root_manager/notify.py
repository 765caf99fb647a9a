"""Pushes oakestra-net's ``POST /api/net/job/update`` to clusters interested in a job.

Cluster managers of the reference learn about instance changes only this way; oaknet's own
cluster managers follow the watch feed instead, so pushing is off unless configured.
Limitation: one worker posts in order, so an unreachable cluster delays the updates of the
others by its retries (``push.retries`` x backoff); clusters that use the feed are not affected.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from oaknet.client import Client, ClientError, Unavailable
from root_manager.clusters import Clusters

LOG = logging.getLogger(__name__)

DEPLOYMENT = "DEPLOYMENT"
UNDEPLOYMENT = "UNDEPLOYMENT"


@dataclass(frozen=True)
class JobUpdate:
    """One notification: an instance of ``job_name`` was deployed or undeployed."""

    job_name: str
    instance_number: int
    type: str


class Notifier:
    """A background worker posting job updates; a cluster that fails is marked ERROR."""

    def __init__(self, clusters: Clusters, token: str | None, timeout: float, retries: int):
        self.clusters = clusters
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self._queue: queue.Queue[JobUpdate | None] = queue.Queue(maxsize=10000)
        self._thread = threading.Thread(target=self._run, name="oaknet-push", daemon=True)
        self._thread.start()

    def notify(self, job_name: str, numbers: list[int], kind: str) -> None:
        """Queue one update per instance number (never blocks the request)."""
        for number in numbers:
            try:
                self._queue.put_nowait(JobUpdate(job_name, number, kind))
            except queue.Full:
                LOG.error("push queue full: update of %s/%d dropped", job_name, number)

    def stop(self) -> None:
        """Finish queued updates and end the worker."""
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            update = self._queue.get()
            if update is None:
                return
            for cluster in self.clusters.interested(update.job_name):
                self._push(cluster, update)

    def _push(self, cluster: dict, update: JobUpdate) -> None:
        host = cluster["cluster_address"]
        host = f"[{host}]" if ":" in host else host
        client = Client(
            f"http://{host}:{cluster['cluster_port']}",
            token=self.token,
            timeout=self.timeout,
            retries=self.retries,
            backoff=0.5,
        )
        body = {
            "job_name": update.job_name,
            "instance_number": update.instance_number,
            "type": update.type,
        }
        try:
            client.post("/api/net/job/update", body, idempotent=True)
            status = "ACTIVE"
        except (ClientError, Unavailable) as exc:
            LOG.warning(
                "push of %s %s/%d to cluster %s failed: %s",
                update.type,
                update.job_name,
                update.instance_number,
                cluster["cluster_id"],
                exc,
            )
            status = "ERROR"
        finally:
            client.close()
        if cluster.get("status") != status:
            self.clusters.set_status(cluster["cluster_id"], status)
