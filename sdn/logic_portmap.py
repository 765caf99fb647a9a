"""Port mappings: a container port exposed on the node's underlay IP through br-phy and br-int.

br-phy (the underlay bridge, NORMAL switching, the node IP on its internal port) steers a mapped
TCP/UDP port of the node IP into a patch port to br-int; everything else keeps NORMAL switching
(so tunnels and the node's own traffic are untouched). br-int DNATs the connection to the
container, remembering in its conntrack entry the patch port (ct_mark) and both MACs (ct_label);
replies are un-DNATed (source = node IP:host port), get the MACs back and leave through the patch
port, which br-phy sends straight out of the underlay port.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdn import pipeline as pl
from sdn.spec import Ct, Flow, GotoTable, Move, Nat, Output, SetField

if TYPE_CHECKING:
    from sdn.logic import LocalPort, NodeContext

UPLINK_OWNER = "uplink"
PHY_OWNER = "phy"

_PROTOCOLS = {"tcp": (pl.PROTO_TCP, "tcp_dst"), "udp": (pl.PROTO_UDP, "udp_dst")}
_MAPPING = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?(?:/(tcp|udp))?$")


@dataclass(frozen=True)
class PortMapping:
    """Host port ``host_port`` of the node IP forwards to ``container_port`` of a container."""

    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __post_init__(self) -> None:
        for name in ("host_port", "container_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 65535:
                raise ValueError(f"portMappings: {name} {value!r} is not a port (1-65535)")
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"portMappings: protocol {self.protocol!r} is not tcp or udp")
        if self.protocol == "udp" and self.host_port in pl.RESERVED_UDP_PORTS:
            raise ValueError(f"portMappings: udp port {self.host_port} carries the tunnels")

    @classmethod
    def parse_list(cls, text: str | None) -> tuple[PortMapping, ...]:
        """Mappings from ``"host[:container][/tcp|/udp];..."`` (the node API's format)."""
        mappings = []
        for part in (text or "").split(";"):
            part = part.strip()
            if not part:
                continue
            m = _MAPPING.match(part)
            if m is None:
                raise ValueError(f"portMappings: {part!r} is not host[:container][/tcp|/udp]")
            host = int(m.group(1))
            mappings.append(cls(host, int(m.group(2) or host), m.group(3) or "tcp"))
        keys = [(pm.host_port, pm.protocol) for pm in mappings]
        if len(keys) != len(set(keys)):
            raise ValueError("portMappings: a host port is given twice")
        return tuple(mappings)


@dataclass(frozen=True)
class Uplink:
    """The patch pair between br-int and br-phy, and br-phy's underlay port (ofports)."""

    int_ofport: int  # br-int's end of the patch pair
    phy_ofport: int  # br-phy's end of the patch pair
    nic_ofport: int  # br-phy's underlay interface


def uplink_flows(ctx: NodeContext, uplink: Uplink) -> list[Flow]:
    """br-int: admit port-mapped traffic from the patch port; send its replies back there."""
    admit = Flow.make(
        pl.CLASSIFY.id,
        pl.PRIO_ADMIT,
        {"eth_type": pl.ETH_IP, "in_port": uplink.int_ofport, "ipv4_dst": ctx.node_ip},
        (
            SetField(pl.REG_ORIGIN, pl.ORIGIN_UPLINK),
            SetField(pl.REG_INGRESS, uplink.int_ofport),
            GotoTable(pl.UNSNAT.id),
        ),
        UPLINK_OWNER,
    )
    reply = Flow.make(
        pl.ROUTING.id,
        pl.PRIO_TUNNEL_REPLY,
        {
            "ct_state": pl.ST_REPLY,
            "ct_mark": (uplink.int_ofport << pl.MARK_INGRESS_OFS, pl.MARK_INGRESS_MASK),
        },
        (
            Move("ct_label", "eth_dst", 48, pl.LABEL_CLIENT_MAC_OFS, 0),
            Move("ct_label", "eth_src", 48, pl.LABEL_NODE_MAC_OFS, 0),
            Output(uplink.int_ofport),
        ),
        UPLINK_OWNER,
    )
    # br-phy floods the underlay's ARP and neighbour solicitations into the patch port too:
    # the gateway responder must not claim the node IP (or any other address) out there.
    quiet = [
        Flow.make(
            pl.CLASSIFY.id,
            pl.PRIO_RESPONDER_SKIP,
            {**match, "in_port": uplink.int_ofport},
            (),
            UPLINK_OWNER,
        )
        for match in (
            {"eth_type": pl.ETH_ARP},
            {"eth_type": pl.ETH_IPV6, "ip_proto": pl.PROTO_ICMPV6, "icmpv6_type": 135},
        )
    ]
    return [admit, reply, *quiet]


def mapping_flows(ctx: NodeContext, port: LocalPort, owner: str) -> list[Flow]:
    """br-int: DNAT new connections to the node IP's mapped ports to ``port``'s container."""
    if port.namespace_ip is None:
        return []
    remember = (
        Move(pl.REG_INGRESS, "ct_mark", pl.MARK_INGRESS_BITS, 0, pl.MARK_INGRESS_OFS),
        Move("eth_src", "ct_label", 48, 0, pl.LABEL_CLIENT_MAC_OFS),
        Move("eth_dst", "ct_label", 48, 0, pl.LABEL_NODE_MAC_OFS),
    )
    flows = []
    for pm in port.port_mappings:
        proto, dst_port = _PROTOCOLS[pm.protocol]
        match = {
            "eth_type": pl.ETH_IP,
            "ip_proto": proto,
            "ct_state": pl.ST_NEW,
            pl.REG_ORIGIN: pl.ORIGIN_UPLINK,
            "ipv4_dst": ctx.node_ip,
            dst_port: pm.host_port,
        }
        dnat = Ct(
            zone=pl.ZONE_DNAT,
            commit=True,
            table=pl.ROUTING.id,
            nat=Nat("dst", port.namespace_ip, pm.container_port),
            exec_=remember,
        )
        flows.append(Flow.make(pl.SERVICE.id, pl.PRIO_SEMANTIC, match, (dnat,), owner))
    return flows


def phy_flows(ctx: NodeContext, uplink: Uplink, ports: Iterable[LocalPort]) -> list[Flow]:
    """br-phy's whole table: mapped ports into the patch port, replies out, NORMAL otherwise."""
    flows = [
        Flow.make(0, pl.PRIO_PHY_NORMAL, {}, (Output(pl.PORT_NORMAL),), PHY_OWNER),
        Flow.make(
            0,
            pl.PRIO_PHY_STEER,
            {"in_port": uplink.phy_ofport},
            (Output(uplink.nic_ofport),),
            PHY_OWNER,
        ),
    ]
    for port in ports:
        for pm in port.port_mappings:
            proto, dst_port = _PROTOCOLS[pm.protocol]
            match = {
                "eth_type": pl.ETH_IP,
                "ip_proto": proto,
                "in_port": uplink.nic_ofport,
                "ipv4_dst": ctx.node_ip,
                dst_port: pm.host_port,
            }
            flows.append(
                Flow.make(0, pl.PRIO_PHY_STEER, match, (Output(uplink.phy_ofport),), PHY_OWNER)
            )
    return flows
