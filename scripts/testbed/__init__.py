"""Namespace testbed: underlay bridge, hosts, OVS workers, containers, servers and clients."""

from testbed.cleanup import cleanup, stale_prefixes
from testbed.core import Testbed
from testbed.nodes import Container, Host, TestbedError, Worker
from testbed.procs import PingResult, ProcessError, http_get, iperf3, ping, udp_send

__all__ = [
    "Container",
    "Host",
    "PingResult",
    "ProcessError",
    "Testbed",
    "TestbedError",
    "Worker",
    "cleanup",
    "http_get",
    "iperf3",
    "ping",
    "stale_prefixes",
    "udp_send",
]
