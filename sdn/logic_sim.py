"""Simulated worker nodes: pipeline state loaded into fake switches joined by fake tunnels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from oaknet.model import Service
from sdn.faketable import Chooser, Emitted, FakeSwitch, FakeSwitchError, Packet
from sdn.logic import LocalPort, NodeContext, Peer, Pipeline
from sdn.spec import Flow, GroupSpec


@dataclass
class SimNode:
    """One node: its pipeline, its local ports, peers and costs, and its fake switch."""

    name: str
    pipeline: Pipeline
    switch: FakeSwitch
    ports: dict[str, LocalPort] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)

    @property
    def ctx(self) -> NodeContext:
        """The node's context."""
        return self.pipeline.ctx

    def attach(self, service: Service, number: int, ofport: int) -> LocalPort:
        """Attach instance ``number`` of ``service`` (as the table places it) on ``ofport``."""
        inst = service.instance(number)
        if inst is None:
            raise ValueError(f"{service.name} has no instance {number}")
        port = LocalPort(
            f"p{ofport}",
            ofport,
            f"02:00:00:00:{ofport >> 8:02x}:{ofport & 255:02x}",
            inst.namespace_ip,
            inst.namespace_ip_v6,
            service.name,
            number,
            inst.instance_ip,
            inst.instance_ip_v6,
        )
        self.ports[port.port_name] = port
        return port

    def desired(self, services: Iterable[Service]) -> tuple[list[Flow], list[GroupSpec]]:
        """Every flow and group the node's switch should hold for ``services``."""
        p = self.pipeline
        flows = p.node_flows() + p.punt_flows()
        for port in self.ports.values():
            flows += p.port_flows(port)
        for peer in self.peers.values():
            flows += p.peer_flows(peer)
        groups: list[GroupSpec] = []
        for svc in services:
            f, g = p.service_flows(svc, self.ports, self.peers, self.costs)
            flows += f
            groups += g
        return flows, groups

    def load(self, services: Iterable[Service]) -> None:
        """Load the desired flows and groups into the fake switch (conntrack is kept)."""
        flows, groups = self.desired(services)
        self.switch.load(flows, groups)


GATEWAY_MAC = "02:00:00:00:00:01"


def example_network(count: int = 3) -> SimNetwork:
    """Nodes n1..n<count> (at most 4): node IP 192.0.2.<i>, subnets 10.18.0.<64(i-1)>/26 and
    fc00::<i-1>00/120, a full mesh of tunnels where node i reaches node j on ofport 100 + j."""
    if not 1 <= count <= 4:
        raise ValueError("count: 1 to 4 nodes fit the example addressing")
    net = SimNetwork()
    for i in range(1, count + 1):
        net.add_node(
            f"n{i}",
            NodeContext(
                f"192.0.2.{i}", f"10.18.0.{64 * (i - 1)}/26", f"fc00::{i - 1:x}00/120", GATEWAY_MAC
            ),
        )
    for i in range(1, count + 1):
        for j in range(i + 1, count + 1):
            net.connect(f"n{i}", 100 + j, f"n{j}", 100 + i)
    return net


@dataclass
class Hop:
    """A packet that left the network at ``node`` (a container port, or the controller)."""

    node: str
    emitted: Emitted

    @property
    def port(self) -> int:
        """The port it left on."""
        return self.emitted.port

    @property
    def packet(self) -> Packet:
        """The packet as it left."""
        return self.emitted.packet


class SimNetwork:
    """Simulated nodes joined by tunnels: what leaves on a tunnel port enters the peer node."""

    def __init__(self) -> None:
        self.nodes: dict[str, SimNode] = {}
        self._links: dict[tuple[str, int], tuple[str, int]] = {}

    def add_node(self, name: str, ctx: NodeContext) -> SimNode:
        """A new node called ``name``."""
        node = SimNode(name, Pipeline(ctx), FakeSwitch(name))
        self.nodes[name] = node
        return node

    def connect(self, a: str, a_port: int, b: str, b_port: int) -> None:
        """A tunnel between nodes ``a`` (ofport ``a_port``) and ``b`` (ofport ``b_port``)."""
        na, nb = self.nodes[a], self.nodes[b]
        na.peers[nb.ctx.node_ip] = Peer(nb.ctx.node_ip, a_port)
        nb.peers[na.ctx.node_ip] = Peer(na.ctx.node_ip, b_port)
        self._links[(a, a_port)] = (b, b_port)
        self._links[(b, b_port)] = (a, a_port)

    def load(self, services: Iterable[Service]) -> None:
        """Load every node's switch from the same service table."""
        services = list(services)
        for node in self.nodes.values():
            node.load(services)

    def send(
        self, node: str, pkt: Packet, choose: Chooser | None = None
    ) -> tuple[list[Hop], list[Hop]]:
        """Where ``pkt`` sent into ``node`` ends up: deliveries and punts, across tunnels."""
        deliveries: list[Hop] = []
        punts: list[Hop] = []
        pending = [(node, pkt)]
        for _ in range(16):
            if not pending:
                return deliveries, punts
            name, packet = pending.pop(0)
            result = self.nodes[name].switch.send(packet, choose)
            punts += [Hop(name, e) for e in result.punts]
            for out in result.outputs:
                peer = self._links.get((name, out.port))
                if peer is None:
                    deliveries.append(Hop(name, out))
                    continue
                arriving = out.packet.to_wire()
                arriving.in_port = peer[1]
                pending.append((peer[0], arriving))
        raise FakeSwitchError("packet keeps crossing tunnels")

    def deliver(self, node: str, pkt: Packet, choose: Chooser | None = None) -> Hop:
        """The one place ``pkt`` is delivered to (AssertionError if it is not exactly one)."""
        deliveries, punts = self.send(node, pkt, choose)
        assert len(deliveries) == 1 and not punts, f"deliveries {deliveries}, punts {punts}"
        return deliveries[0]
