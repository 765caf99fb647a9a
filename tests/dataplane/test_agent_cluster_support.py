"""Cluster-mode agents on the testbed: root + cluster manager on an underlay host (no tests).

The managers and agents come from the testbed library (``testbed.managers``,
``testbed.agents``); this module keeps the names the cluster-mode tests import.
"""

from __future__ import annotations

from testbed import agents as tb_agents
from testbed.agents import NodeAgent
from testbed.managers import (
    CLUSTER_ID,
    CLUSTER_PORT,
    MGR_IP,
    ROOT_PORT,
    InNetns,
    Managers,
    service_ips,
)

__all__ = [
    "CLUSTER_ID",
    "CLUSTER_PORT",
    "MGR_IP",
    "ROOT_PORT",
    "InNetns",
    "Managers",
    "cluster_agent",
    "service_ips",
    "start_cluster_agents",
    "wait_for",
]


def cluster_agent(tb, mgrs: Managers, worker, index: int, **extra) -> NodeAgent:
    """A NodeAgent of ``worker`` in cluster mode (token file in its dir); not started."""
    token = mgrs.node_tokens[worker.name]
    return tb_agents.cluster_agent(tb, worker, index, mgrs.cluster_url, token, **extra)


def start_cluster_agents(tb, mgrs: Managers, workers: list, **extra) -> list[NodeAgent]:
    """One cluster-mode agent per worker, started and reconciled."""
    return tb_agents.start_cluster_agents(tb, workers, mgrs.cluster_url, mgrs.node_tokens, **extra)


def wait_for(check, timeout: float = 10.0, what: str = "a condition"):
    """Poll ``check`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    return tb_agents.wait_until(what, check, timeout)
