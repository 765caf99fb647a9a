"""Namespace testbed: underlay bridge, hosts, OVS workers, containers, servers and clients."""

from testbed.agents import (
    AgentError,
    NodeAgent,
    cluster_agent,
    start_agents,
    start_cluster_agents,
    write_table,
)
from testbed.cleanup import cleanup, stale_prefixes
from testbed.core import Testbed
from testbed.managers import Managers
from testbed.nodes import Container, Host, TestbedError, Worker
from testbed.procs import PingResult, ProcessError, http_get, iperf3, ping, udp_send

__all__ = [
    "AgentError",
    "Container",
    "Host",
    "Managers",
    "NodeAgent",
    "PingResult",
    "ProcessError",
    "Testbed",
    "TestbedError",
    "Worker",
    "cleanup",
    "cluster_agent",
    "http_get",
    "iperf3",
    "ping",
    "stale_prefixes",
    "start_agents",
    "start_cluster_agents",
    "udp_send",
    "write_table",
]
