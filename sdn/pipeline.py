"""The node pipeline's one declaration: tables, conntrack zones, registers, marks, priorities."""

from __future__ import annotations

from dataclasses import dataclass

from sdn.spec import CT_EST, CT_INV, CT_NEW, CT_REL, CT_RPL, CT_TRK


@dataclass(frozen=True)
class Table:
    """One OpenFlow table of br-int: its id, name, what it does and where packets go next."""

    id: int
    name: str
    purpose: str
    next_tables: tuple[int, ...] = ()


# Packets walk the tables top-down; ``ct(..., table=N)`` recirculates into N after conntrack.
CLASSIFY = Table(
    0,
    "classify",
    "admit IP from a local port (by its namespace address) or a tunnel (by VNI); answer ARP "
    "and neighbour solicitations with the gateway MAC; drop everything else",
    (1, 6),
)
UNSNAT = Table(
    1,
    "unsnat",
    "packets to a local container's instance IP: conntrack in the SNAT zone with nat, which "
    "turns a reply to a local client's instance IP back into its namespace IP",
    (2,),
)
UNDNAT = Table(
    2,
    "undnat",
    "every IP packet: conntrack in the DNAT zone with nat (un-DNATs replies, re-applies the "
    "DNAT of established forward packets)",
    (3,),
)
SERVICE = Table(
    3,
    "service",
    "new connections: service IP -> group, instance IP -> its instance, local subnet -> "
    "commit; no instance -> reject punt; unknown semantic address -> unknown punt",
    (4, 5),
)
SNAT = Table(
    4,
    "snat",
    "source translation: a local client's new translated connection gets its instance IP as "
    "source (commit in the SNAT zone); later forward packets get the stored SNAT",
    (5,),
)
ROUTING = Table(
    5,
    "routing",
    "L3 forwarding: replies to tunnel-borne connections back into their tunnel, namespace "
    "IPs to their port (IN_PORT for hairpin), remote instance IPs into their node's tunnel",
)
ND_REPLY = Table(
    6,
    "nd_reply",
    "finishes a neighbour advertisement built in classify (the target link-layer address can "
    "only be set once the packet is an NA)",
)

TABLES = (CLASSIFY, UNSNAT, UNDNAT, SERVICE, SNAT, ROUTING, ND_REPLY)
TABLE_BY_ID = {t.id: t for t in TABLES}

# Conntrack zones: DNAT (and plain commits) in one, the client-side SNAT in another, the way OVN
# separates them, so a connection translated at both ends on one node keeps two entries.
ZONE_DNAT = 1
ZONE_SNAT = 2

# reg0: where the packet entered the node.
REG_ORIGIN = "reg0"
ORIGIN_LOCAL = 1  # a local container's port
ORIGIN_TUNNEL = 2  # a tunnel from another worker node
ORIGIN_UPLINK = 3  # the patch port from br-phy (port-mapped traffic to the node IP)
# reg1: set to SNAT_REQUESTED by the service table when the new connection needs source NAT.
REG_SNAT = "reg1"
SNAT_REQUESTED = 1
# reg2: scratch space of the ARP responder (swapping sender and target addresses).
REG_SCRATCH = "reg2"
# reg6: the ofport of the tunnel (or uplink patch port) the packet came in on (copied into
# ct_mark at commit).
REG_INGRESS = "reg6"
# reg7: the underlay source address of a packet from the any-peer tunnel port (a node without
# its own tunnel here), kept in the connection's ct_label so its replies can go back there.
REG_TUN_SRC = "reg7"

# ct_mark layout (32 bits):
#   bit 0       MARK_SNAT: committed by a local client's translation; forward packets of the
#               connection need the stored SNAT of the SNAT zone applied
#   bits 16-31  the ingress ofport of a connection that arrived from a tunnel (or the uplink
#               patch port), so its replies return that way without a route to the client
# ct_label of a port-mapped connection: bits 0-47 the client's MAC (the frame's eth_src), bits
# 48-95 the node's MAC (its eth_dst), restored on replies that leave through the uplink.
MARK_SNAT = 0x1
MARK_INGRESS_OFS = 16
MARK_INGRESS_BITS = 16
MARK_INGRESS_MASK = 0xFFFF0000
LABEL_CLIENT_MAC_OFS = 0
LABEL_NODE_MAC_OFS = 48
# ct_label of a connection from a tunnel: bits 0-31 the sending node's underlay IPv4 (REG_TUN_SRC;
# zero unless it came through the any-peer port).
LABEL_TUN_SRC_OFS = 0

# VXLAN network identifier of the overlay (tun_id on every tunnel packet).
VNI = 0x10

# Priorities, per table. Equal (table, priority) pairs never share a match.
# classify
PRIO_RESPONDER_SKIP = 310  # ARP probes and DAD solicitations: never answered
PRIO_RESPONDER = 300  # ARP requests and neighbour solicitations: answered
PRIO_PEER_LEARN = 200  # BFD from a node without its own tunnel here: the agent learns it
PRIO_ADMIT = 100  # a local port's or tunnel's IP traffic
# unsnat
PRIO_UNSNAT = 100  # destination is a local instance IP
PRIO_UNSNAT_SKIP = 50  # any other IP packet
# undnat
PRIO_UNDNAT = 100
# service
PRIO_INVALID = 300  # ct_state +inv: dropped
PRIO_TRACKED = 290  # not new (+est, +rel): on to snat
PRIO_SEMANTIC = 200  # new connection to a service IP or instance IP
PRIO_LOCAL_SUBNET = 40  # new connection between two local namespace IPs
PRIO_UNKNOWN = 30  # new connection to an unknown address of a semantic range
# snat
PRIO_SNAT_COMMIT = 200  # new translated connection from a local source
PRIO_SNAT_APPLY = 150  # later forward packets of a translated connection
PRIO_SNAT_NO_SOURCE = 100  # translation asked for a source without instance IP: drop
# routing
PRIO_TUNNEL_REPLY = 300  # reply of a tunnel-borne connection
PRIO_HAIRPIN = 110  # destination is the port the packet came in on
PRIO_ROUTE = 100  # destination address -> port or tunnel
# nd_reply
PRIO_ND_REPLY = 100
# br-phy (the underlay bridge): port mappings and the uplink patch port over NORMAL switching
PRIO_PHY_STEER = 100
PRIO_PHY_NORMAL = 0
# every table
PRIO_MISS = 0

# Group ids. An IPv4 service IP's group id is its address's low 31 bits (the semantic ranges of
# one node lie in one half of the IPv4 space, so the mapping is one-to-one). IPv6 service IPs
# use the upper id range [GROUP_V6_BASE, GROUP_V6_BASE + GROUP_V6_SPAN); see logic_service.
GROUP_V4_MASK = 0x7FFFFFFF
GROUP_V6_BASE = 0x80000000
GROUP_V6_SPAN = 0x7FFFFF00  # ids stay below OpenFlow's OFPG_MAX (0xffffff00)

# OpenFlow's NORMAL port: the bridge's own L2 switching (br-phy's default behaviour).
PORT_NORMAL = 0xFFFFFFFA
# BFD control packets (RFC 5881) that OVS sends inside a tunnel.
BFD_UDP_PORT = 3784
# Host ports a port mapping may not take: the tunnel protocols' own UDP ports.
RESERVED_UDP_PORTS = (4789, 6081)

ETH_IP = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

# ct_state matches, as (value, mask).
ST_NEW = (CT_NEW | CT_TRK, CT_NEW | CT_TRK)  # +new+trk
ST_NOT_NEW = (CT_TRK, CT_NEW | CT_TRK)  # -new+trk: established or related
ST_INVALID = (CT_INV | CT_TRK, CT_INV | CT_TRK)  # +inv+trk
ST_EST_FORWARD = (CT_EST | CT_TRK, CT_EST | CT_RPL | CT_TRK)  # +est-rpl+trk
ST_REL_FORWARD = (CT_REL | CT_TRK, CT_REL | CT_RPL | CT_TRK)  # +rel-rpl+trk
ST_REPLY = (CT_RPL | CT_TRK, CT_RPL | CT_TRK)  # +rpl+trk (established or related)


@dataclass(frozen=True)
class Family:
    """The match fields of one IP version."""

    version: int
    eth_type: int
    src: str
    dst: str
    any_addr: str


V4 = Family(4, ETH_IP, "ipv4_src", "ipv4_dst", "0.0.0.0")
V6 = Family(6, ETH_IPV6, "ipv6_src", "ipv6_dst", "::")
FAMILIES = (V4, V6)
