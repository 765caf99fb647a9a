"""The node agent's pipeline logic: flows and groups from the node's state and the service table.

Pure computation, no switch: ``Pipeline`` turns the node context, its local ports, its peers and
the service table into ``sdn.spec`` records, one owner at a time, so a change recomputes only
what it touches. Table ids, zones, registers and priorities come from ``sdn.pipeline``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from oaknet.model import Service
from sdn import pipeline as pl
from sdn.logic_portmap import PortMapping, Uplink, mapping_flows, phy_flows, uplink_flows
from sdn.logic_service import GroupIds, service_flows
from sdn.logic_tunnel import any_peer_flows
from sdn.spec import (
    IN_PORT,
    Controller,
    Ct,
    Flow,
    GotoTable,
    GroupSpec,
    Move,
    Nat,
    Output,
    Resubmit,
    SetField,
    punt_owner,
)

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def _network(
    field_name: str, value: str, version: int
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except (ValueError, TypeError):
        raise ValueError(f"{field_name}: {value!r} is not a network") from None
    if net.version != version:
        raise ValueError(f"{field_name}: {value} is not an IPv{version} network")
    return net


@dataclass(frozen=True)
class NodeContext:
    """What the pipeline needs to know about this node."""

    node_ip: str  # this node's underlay IPv4 (tunnel endpoint)
    subnet_v4: str  # e.g. "10.18.0.0/26"; gateway = first host
    subnet_v6: str | None  # e.g. "fc00::/120"; gateway = first host
    gateway_mac: str  # the MAC the ARP/ND responder answers with
    service_ranges_v4: tuple[str, ...] = ("10.30.0.0/16",)  # semantic addresses (service IPs
    service_ranges_v6: tuple[str, ...] = ("fdff::/16",)  # and instance IPs)

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.node_ip)
        except ValueError:
            raise ValueError(f"node_ip: {self.node_ip!r} is not an IPv4 address") from None
        _network("subnet_v4", self.subnet_v4, 4)
        if self.subnet_v6 is not None:
            _network("subnet_v6", self.subnet_v6, 6)
        if not isinstance(self.gateway_mac, str) or not _MAC.match(self.gateway_mac):
            raise ValueError(f"gateway_mac: {self.gateway_mac!r} is not a MAC address")
        v4 = [_network("service_ranges_v4", r, 4) for r in self.service_ranges_v4]
        for r in self.service_ranges_v6:
            _network("service_ranges_v6", r, 6)
        # IPv4 group ids are the low 31 address bits: one-to-one only inside one half.
        halves = {int(n.network_address) >> 31 for n in v4} | {
            int(n.broadcast_address) >> 31 for n in v4
        }
        if len(halves) > 1:
            raise ValueError(
                "service_ranges_v4: must lie within one half of the IPv4 space "
                "(0/1 or 128/1) so that service IPs map to distinct group ids"
            )

    @property
    def gateway_v4(self) -> str:
        """The containers' IPv4 gateway: the first host of the node subnet."""
        return str(_network("subnet_v4", self.subnet_v4, 4).network_address + 1)

    @property
    def gateway_v6(self) -> str | None:
        """The containers' IPv6 gateway, or None without an IPv6 subnet."""
        if self.subnet_v6 is None:
            return None
        return str(_network("subnet_v6", self.subnet_v6, 6).network_address + 1)


@dataclass(frozen=True)
class LocalPort:
    """A container attached on this node."""

    port_name: str
    ofport: int
    mac: str
    namespace_ip: str | None
    namespace_ip_v6: str | None
    job_name: str
    instance_number: int
    instance_ip: str | None  # its semantic addresses (from the table)
    instance_ip_v6: str | None
    port_mappings: tuple[PortMapping, ...] = ()  # host ports of the node IP forwarded to it


@dataclass(frozen=True)
class Peer:
    """Another worker node reachable through a tunnel port."""

    node_ip: str
    ofport: int


def port_owner(port_name: str) -> str:
    """The owner key of a local port's flows."""
    return f"port:{port_name}"


def peer_owner(node_ip: str) -> str:
    """The owner key of a peer's flows."""
    return f"peer:{node_ip}"


def _prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[str, str]:
    return (str(net.network_address), str(net.netmask))


class Pipeline:
    """Computes the flows and groups of br-int for one node, per owner."""

    def __init__(self, ctx: NodeContext):
        self.ctx = ctx
        self.group_ids = GroupIds()
        self._ranges = {
            4: [_prefix(_network("", r, 4)) for r in ctx.service_ranges_v4],
            6: [_prefix(_network("", r, 6)) for r in ctx.service_ranges_v6],
        }
        self._subnets = {4: _prefix(_network("", ctx.subnet_v4, 4))}
        if ctx.subnet_v6 is not None:
            self._subnets[6] = _prefix(_network("", ctx.subnet_v6, 6))

    def node_flows(self) -> list[Flow]:
        """The static flows: table misses, ARP/ND responder, conntrack steps, local subnet."""
        gw = self.ctx.gateway_mac
        # Every table drops what it does not match, except snat, which passes it to routing.
        misses = {pl.SNAT.id: (GotoTable(pl.ROUTING.id),)}
        flows = [Flow.make(t.id, pl.PRIO_MISS, {}, misses.get(t.id, ())) for t in pl.TABLES]
        flows += self._responder_flows(gw)
        for fam in pl.FAMILIES:
            ip = {"eth_type": fam.eth_type}
            # The SNAT zone is looked up only for local instance IPs (see port_flows).
            flows.append(
                Flow.make(pl.UNSNAT.id, pl.PRIO_UNSNAT_SKIP, ip, (GotoTable(pl.UNDNAT.id),))
            )
            flows.append(
                Flow.make(
                    pl.UNDNAT.id,
                    pl.PRIO_UNDNAT,
                    ip,
                    (Ct(zone=pl.ZONE_DNAT, nat=Nat(), table=pl.SERVICE.id),),
                )
            )
            for state in (pl.ST_EST_FORWARD, pl.ST_REL_FORWARD):
                flows.append(
                    Flow.make(
                        pl.SNAT.id,
                        pl.PRIO_SNAT_APPLY,
                        {**ip, "ct_state": state, "ct_mark": (pl.MARK_SNAT, pl.MARK_SNAT)},
                        (Ct(zone=pl.ZONE_SNAT, nat=Nat(), table=pl.ROUTING.id),),
                    )
                )
            subnet = self._subnets.get(fam.version)
            if subnet is not None:
                # Direct traffic between local containers: committed so replies are +est.
                flows.append(
                    Flow.make(
                        pl.SERVICE.id,
                        pl.PRIO_LOCAL_SUBNET,
                        {
                            **ip,
                            "ct_state": pl.ST_NEW,
                            pl.REG_ORIGIN: pl.ORIGIN_LOCAL,
                            fam.dst: subnet,
                        },
                        (Ct(zone=pl.ZONE_DNAT, commit=True, table=pl.ROUTING.id),),
                    )
                )
        flows += [
            Flow.make(pl.SERVICE.id, pl.PRIO_INVALID, {"ct_state": pl.ST_INVALID}, ()),
            Flow.make(
                pl.SERVICE.id,
                pl.PRIO_TRACKED,
                {"ct_state": pl.ST_NOT_NEW},
                (GotoTable(pl.SNAT.id),),
            ),
            # A translation was asked for but no port flow knows the source's instance IP:
            # the namespace IP must not leave, so the connection is dropped.
            Flow.make(
                pl.SNAT.id,
                pl.PRIO_SNAT_NO_SOURCE,
                {"ct_state": pl.ST_NEW, pl.REG_SNAT: pl.SNAT_REQUESTED},
                (),
            ),
        ]
        return flows

    def _responder_flows(self, gw: str) -> list[Flow]:
        arp_request = {"eth_type": pl.ETH_ARP, "arp_op": 1}
        ns = {"eth_type": pl.ETH_IPV6, "ip_proto": pl.PROTO_ICMPV6, "icmpv6_type": 135}
        return [
            # ARP probes (sender 0.0.0.0) ask whether an address is taken: never answer.
            Flow.make(
                pl.CLASSIFY.id, pl.PRIO_RESPONDER_SKIP, {**arp_request, "arp_spa": "0.0.0.0"}, ()
            ),
            Flow.make(
                pl.CLASSIFY.id,
                pl.PRIO_RESPONDER,
                arp_request,
                (
                    Move("eth_src", "eth_dst", 48),
                    SetField("eth_src", gw),
                    SetField("arp_op", 2),
                    Move("arp_sha", "arp_tha", 48),
                    SetField("arp_sha", gw),
                    Move("arp_tpa", pl.REG_SCRATCH, 32),
                    Move("arp_spa", "arp_tpa", 32),
                    Move(pl.REG_SCRATCH, "arp_spa", 32),
                    Output(IN_PORT),
                ),
            ),
            # Duplicate address detection (source ::): an answer would go to ::.
            Flow.make(pl.CLASSIFY.id, pl.PRIO_RESPONDER_SKIP, {**ns, "ipv6_src": "::"}, ()),
            Flow.make(
                pl.CLASSIFY.id,
                pl.PRIO_RESPONDER,
                {**ns, "icmpv6_code": 0},
                (
                    Move("eth_src", "eth_dst", 48),
                    SetField("eth_src", gw),
                    Move("ipv6_src", "ipv6_dst", 128),
                    Move("ipv6_nd_target", "ipv6_src", 128),
                    SetField("icmpv6_type", 136),
                    SetField("nd_reserved", 0x60000000),  # solicited + override
                    SetField("nd_options_type", 2),  # the source option becomes the target option
                    Resubmit(pl.ND_REPLY.id),
                ),
            ),
            Flow.make(
                pl.ND_REPLY.id,
                pl.PRIO_ND_REPLY,
                {"eth_type": pl.ETH_IPV6, "ip_proto": pl.PROTO_ICMPV6, "icmpv6_type": 136},
                (SetField("ipv6_nd_tll", gw), Output(IN_PORT)),
            ),
        ]

    def punt_flows(self) -> list[Flow]:
        """Controller flows: new connections to unknown addresses of the semantic ranges."""
        owner = punt_owner("unknown")
        flows = []
        for fam in pl.FAMILIES:
            for prefix in self._ranges[fam.version]:
                match = {
                    "eth_type": fam.eth_type,
                    "ct_state": pl.ST_NEW,
                    pl.REG_ORIGIN: pl.ORIGIN_LOCAL,
                    fam.dst: prefix,
                }
                flows.append(
                    Flow.make(pl.SERVICE.id, pl.PRIO_UNKNOWN, match, (Controller(),), owner)
                )
        return flows

    def port_flows(self, port: LocalPort) -> list[Flow]:
        """Admission, source translation and routes of one local container's port."""
        owner = port_owner(port.port_name)
        gw = self.ctx.gateway_mac
        deliver = (SetField("eth_src", gw), SetField("eth_dst", port.mac))
        flows = []
        for fam in pl.FAMILIES:
            ns_ip = port.namespace_ip if fam.version == 4 else port.namespace_ip_v6
            if ns_ip is None:
                continue
            inst_ip = port.instance_ip if fam.version == 4 else port.instance_ip_v6
            ip = {"eth_type": fam.eth_type}
            flows.append(
                Flow.make(
                    pl.CLASSIFY.id,
                    pl.PRIO_ADMIT,
                    {**ip, "in_port": port.ofport, fam.src: ns_ip},
                    (SetField(pl.REG_ORIGIN, pl.ORIGIN_LOCAL), GotoTable(pl.UNSNAT.id)),
                    owner,
                )
            )
            if inst_ip is not None:
                # Replies to the instance IP this container's connections leave with get their
                # namespace IP back. Only this node's own instance IPs: a forward packet to a
                # remote instance IP would match its own SNAT entry (whose original
                # destination is that address) and be translated before the DNAT zone.
                flows.append(
                    Flow.make(
                        pl.UNSNAT.id,
                        pl.PRIO_UNSNAT,
                        {**ip, fam.dst: inst_ip},
                        (Ct(zone=pl.ZONE_SNAT, nat=Nat(), table=pl.UNDNAT.id),),
                        owner,
                    )
                )
                flows.append(
                    Flow.make(
                        pl.SNAT.id,
                        pl.PRIO_SNAT_COMMIT,
                        {
                            **ip,
                            "ct_state": pl.ST_NEW,
                            pl.REG_SNAT: pl.SNAT_REQUESTED,
                            fam.src: ns_ip,
                        },
                        (
                            Ct(
                                zone=pl.ZONE_SNAT,
                                commit=True,
                                table=pl.ROUTING.id,
                                nat=Nat("src", inst_ip),
                            ),
                        ),
                        owner,
                    )
                )
            flows.append(
                Flow.make(
                    pl.ROUTING.id,
                    pl.PRIO_ROUTE,
                    {**ip, fam.dst: ns_ip},
                    (*deliver, Output(port.ofport)),
                    owner,
                )
            )
            # Output to the input port is silently dropped by OpenFlow: hairpin uses IN_PORT.
            flows.append(
                Flow.make(
                    pl.ROUTING.id,
                    pl.PRIO_HAIRPIN,
                    {**ip, "in_port": port.ofport, fam.dst: ns_ip},
                    (*deliver, Output(IN_PORT)),
                    owner,
                )
            )
        return flows + mapping_flows(self.ctx, port, owner)

    def peer_flows(self, peer: Peer) -> list[Flow]:
        """Admission from one peer's tunnel, and replies of its connections back into it."""
        owner = peer_owner(peer.node_ip)
        flows = [
            Flow.make(
                pl.CLASSIFY.id,
                pl.PRIO_ADMIT,
                {"eth_type": fam.eth_type, "in_port": peer.ofport, "tunnel_id": pl.VNI},
                (
                    SetField(pl.REG_ORIGIN, pl.ORIGIN_TUNNEL),
                    SetField(pl.REG_INGRESS, peer.ofport),
                    GotoTable(pl.UNSNAT.id),
                ),
                owner,
            )
            for fam in pl.FAMILIES
        ]
        flows.append(
            Flow.make(
                pl.ROUTING.id,
                pl.PRIO_TUNNEL_REPLY,
                {
                    "ct_state": pl.ST_REPLY,
                    "ct_mark": (peer.ofport << pl.MARK_INGRESS_OFS, pl.MARK_INGRESS_MASK),
                },
                (SetField("tunnel_id", pl.VNI), Output(peer.ofport)),
                owner,
            )
        )
        return flows

    def any_peer_flows(self, ofport: int) -> list[Flow]:
        """The ``remote_ip=flow`` tunnel port's flows (owner ``peer:any``; see logic_tunnel)."""
        return any_peer_flows(ofport)

    def uplink_flows(self, uplink: Uplink) -> list[Flow]:
        """br-int's side of port mappings: admission from br-phy's patch port, replies back."""
        return uplink_flows(self.ctx, uplink)

    def phy_flows(self, uplink: Uplink, ports: Iterable[LocalPort]) -> list[Flow]:
        """br-phy's complete flow table (owner "phy"): steers the local ports' mapped ports."""
        return phy_flows(self.ctx, uplink, ports)

    def service_flows(
        self,
        service: Service,
        ports: Mapping[str, LocalPort],
        peers: Mapping[str, Peer],
        costs: Mapping[str, float],
    ) -> tuple[list[Flow], list[GroupSpec]]:
        """The flows and groups of one service (owner ``spec.service_owner(name)``).

        ``ports`` are the local ports (any key), ``peers`` map a node IP to its tunnel,
        ``costs`` a node IP to the RTT in ms from here. A service IP or instance IP with no
        reachable instance gets a controller flow owned by ``punt_owner("reject")`` instead,
        so a packet-in's cookie tells its purpose; book those flows under the service too.
        """
        return service_flows(self.ctx, service, ports, peers, costs, self.group_ids)
