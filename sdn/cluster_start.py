"""Joining the cluster at start: register (or resume from the saved state) and get subnets."""

from __future__ import annotations

import logging
import threading

from oaknet.model import Service
from sdn.cluster import ClusterSync
from sdn.clusterlink import ClientError, ClusterLink, ClusterState, Unavailable
from sdn.clusterlink import load_cluster_state as load_state
from sdn.config import AgentConfig
from sdn.outbox import MAX_BACKOFF_FACTOR

LOG = logging.getLogger(__name__)

# Refusals that waiting does not cure (a wrong token or node id): the start ends.
FATAL_STATUS = (400, 401, 403)


def join_cluster(
    cfg: AgentConfig, stop: threading.Event
) -> tuple[AgentConfig, ClusterSync, dict[str, Service]] | None:
    """Register with the cluster; the config with its subnets, the cluster sync and the table.

    Without a saved state the agent waits for the cluster (its subnets come from there). With
    one, an unreachable cluster does not stop the start: the saved subnets, table and revision
    are used and the follower registers once the cluster answers. None: the start ends.
    """
    link = ClusterLink(cfg)
    saved = load_state(cfg.state_dir)
    if (saved.node_id, saved.cluster_url) not in ((None, None), (cfg.node_id, cfg.cluster_url)):
        LOG.warning(
            "the state dir holds node %s of %s; starting over as %s of %s",
            saved.node_id,
            saved.cluster_url,
            cfg.node_id,
            cfg.cluster_url,
        )
        saved = ClusterState()
    doc = _register(cfg, link, saved, stop)
    if doc is None and not saved.subnet_v4:
        return None
    if doc is not None:
        v4 = f"{doc['subnet_addr']}/{doc['subnet_prefix']}"
        v6 = None
        if doc.get("subnet_addr_v6"):
            v6 = f"{doc['subnet_addr_v6']}/{doc['subnet_prefix_v6']}"
        if saved.subnet_v4 and (saved.subnet_v4, saved.subnet_v6) != (v4, v6):
            # Limitation: the containers keep their addresses; a node the cluster forgot
            # entirely needs a restart with an empty state dir to take the new subnets.
            LOG.error(
                "the cluster gives subnets %s and %s, the saved state holds %s and %s; "
                "keeping the saved ones",
                v4,
                v6,
                saved.subnet_v4,
                saved.subnet_v6,
            )
            v4, v6 = saved.subnet_v4, saved.subnet_v6
        LOG.info(
            "registered with %s as %s: subnets %s and %s", cfg.cluster_url, cfg.node_id, v4, v6
        )
    else:
        v4, v6 = saved.subnet_v4, saved.subnet_v6
    saved.node_id, saved.cluster_url = cfg.node_id, cfg.cluster_url
    saved.subnet_v4, saved.subnet_v6 = v4, v6
    cfg = cfg.with_subnets(v4, v6)
    return cfg, ClusterSync(cfg, link, saved, registered=doc is not None), saved.table()


def _register(
    cfg: AgentConfig, link: ClusterLink, saved: ClusterState, stop: threading.Event
) -> dict | None:
    """The registration answer; None when resuming from the saved state or stopping."""
    backoff = cfg.cluster_retry_s
    while not stop.is_set():
        try:
            return link.register()
        except ClientError as exc:
            if exc.status in FATAL_STATUS and not saved.subnet_v4:
                LOG.error("cannot start: the cluster refused the registration: %s", exc)
                return None
            failure: Exception = exc
        except Unavailable as exc:
            failure = exc
        if saved.subnet_v4:
            LOG.warning(
                "cluster not reachable (%s); resuming from the saved state at revision %d",
                failure,
                saved.revision,
            )
            return None
        LOG.warning("cluster not reachable (%s); retrying in %.1f s", failure, backoff)
        stop.wait(backoff)
        backoff = min(backoff * 2, cfg.cluster_retry_s * MAX_BACKOFF_FACTOR)
    return None
