"""The testbed's records: hosts on the underlay, workers running OVS, container namespaces."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovs_setup.netns import netns_path
from ovs_setup.node import NodeOvs
from testbed import procs


class TestbedError(RuntimeError):
    """The testbed could not be built as asked."""


@dataclass
class Host:
    """A namespace joined to the underlay bridge; ``ip4``/``ip6`` are its underlay addresses."""

    name: str
    netns: str
    ip4: str
    ip6: str | None
    ip4_cidr: str
    ip6_cidr: str | None

    @property
    def addresses(self) -> list[str]:
        """Return the host's underlay addresses without prefix length."""
        return [a for a in (self.ip4, self.ip6) if a]


@dataclass
class Worker(Host):
    """A host running its own OVS: ``br-phy`` holds the node IP, ``br-int`` is for the agent."""

    ovs: NodeOvs = field(repr=False, default=None)  # type: ignore[assignment]
    bridge: str = "br-int"
    underlay_bridge: str = "br-phy"

    @property
    def db_url(self) -> str:
        """Return the OVSDB URL of this worker's ovsdb-server."""
        return self.ovs.db_url

    def ofctl(self, *args: str, check: bool = True) -> str:
        """Run ``ovs-ofctl -O OpenFlow15 CMD <br-int mgmt> ARGS...`` in the worker's netns."""
        cmd, rest = args[0], list(args[1:])
        argv = ["ovs-ofctl", "-O", "OpenFlow15", cmd, self.ovs.mgmt_url(self.bridge), *rest]
        proc = procs.run(self.netns, argv)
        if check and proc.returncode != 0:
            raise TestbedError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    def dump_flows(self, *match: str) -> list[str]:
        """Return br-int's flows (no stats), one string per flow."""
        out = (
            self.ofctl("dump-flows", *match, "--no-stats")
            if match
            else self.ofctl("dump-flows", "--no-stats")
        )
        return [line.strip() for line in out.splitlines() if "actions=" in line]

    def dump_groups(self) -> list[str]:
        """Return br-int's groups, one string per group."""
        out = self.ofctl("dump-groups")
        return [line.strip() for line in out.splitlines() if "group_id=" in line]


@dataclass
class Container:
    """An empty namespace meant for one worker's br-int (the agent or ``attach`` wires it)."""

    name: str
    netns: str
    worker: Worker

    @property
    def path(self) -> str:
        """Return the namespace path (what a container runtime would hand the agent)."""
        return netns_path(self.netns)
