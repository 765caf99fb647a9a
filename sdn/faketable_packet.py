"""Packet descriptions for the fake switch, and field reads/writes by OXM name."""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field

from sdn import pipeline as pl
from sdn import spec

# OXM field name -> Packet attribute, per kind of value.
_IP4_FIELDS = {
    "ipv4_src": "ip_src",
    "ipv4_dst": "ip_dst",
    "arp_spa": "arp_spa",
    "arp_tpa": "arp_tpa",
}
_IP6_FIELDS = {"ipv6_src": "ip_src", "ipv6_dst": "ip_dst", "ipv6_nd_target": "nd_target"}
_MAC_FIELDS = {
    "eth_src": "eth_src",
    "eth_dst": "eth_dst",
    "arp_sha": "arp_sha",
    "arp_tha": "arp_tha",
    "ipv6_nd_sll": "nd_sll",
    "ipv6_nd_tll": "nd_tll",
}
_INT_FIELDS = {
    "tcp_src": "tp_src",
    "udp_src": "tp_src",
    "tcp_dst": "tp_dst",
    "udp_dst": "tp_dst",
    "icmpv4_type": "icmp_type",
    "icmpv6_type": "icmp_type",
    "icmpv4_code": "icmp_code",
    "icmpv6_code": "icmp_code",
}
_ATTRS = {**_IP4_FIELDS, **_IP6_FIELDS, **_MAC_FIELDS, **_INT_FIELDS}
_IP4, _IP6, _ARP = pl.ETH_IP, pl.ETH_IPV6, pl.ETH_ARP
_ECHO = {1: (8, 0), 58: (128, 129)}  # request, reply


@dataclass
class Packet:
    """A packet description; fields absent from the packet are None."""

    in_port: int
    eth_src: str = "02:00:00:00:00:aa"
    eth_dst: str = "02:00:00:00:00:01"
    eth_type: int = _IP4
    ip_src: str | None = None
    ip_dst: str | None = None
    ip_proto: int | None = None
    tp_src: int | None = None
    tp_dst: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    arp_op: int | None = None
    arp_spa: str | None = None
    arp_tpa: str | None = None
    arp_sha: str | None = None
    arp_tha: str | None = None
    nd_target: str | None = None
    nd_sll: str | None = None
    nd_tll: str | None = None
    nd_reserved: int | None = None
    nd_options_type: int | None = None
    tunnel_id: int = 0
    inner: Packet | None = None  # the packet an ICMP error is about
    regs: dict[int, int] = field(default_factory=dict)
    ct_state: int = 0
    ct_zone: int = 0
    ct_mark: int = 0
    ct_label: int = 0

    @classmethod
    def ip(
        cls,
        in_port: int,
        src: str,
        dst: str,
        proto: str = "tcp",
        sport: int = 40000,
        dport: int = 80,
        **kw,
    ) -> Packet:
        """A TCP, UDP or ICMP echo request packet (IPv4 or IPv6 by the addresses)."""
        v6 = ipaddress.ip_address(src).version == 6
        pkt = cls(in_port, eth_type=_IP6 if v6 else _IP4, ip_src=src, ip_dst=dst, **kw)
        if proto == "icmp":
            pkt.ip_proto = 58 if v6 else 1
            pkt.icmp_type, pkt.icmp_code, pkt.icmp_id = _ECHO[pkt.ip_proto][0], 0, sport
        else:
            pkt.ip_proto = {"tcp": 6, "udp": 17}[proto]
            pkt.tp_src, pkt.tp_dst = sport, dport
        return pkt

    @classmethod
    def icmp_error(
        cls, in_port: int, src: str, about: Packet, type_: int = 3, code: int = 3, **kw
    ) -> Packet:
        """An ICMP(v6) error from ``src`` about packet ``about`` (sent back to its source)."""
        v6 = about.eth_type == _IP6
        inner = Packet(
            0,
            eth_type=about.eth_type,
            ip_src=about.ip_src,
            ip_dst=about.ip_dst,
            ip_proto=about.ip_proto,
            tp_src=about.tp_src,
            tp_dst=about.tp_dst,
            icmp_type=about.icmp_type,
            icmp_id=about.icmp_id,
        )
        return cls(
            in_port,
            eth_type=about.eth_type,
            ip_src=src,
            ip_dst=about.ip_src,
            ip_proto=58 if v6 else 1,
            icmp_type=type_,
            icmp_code=code,
            inner=inner,
            **kw,
        )

    @classmethod
    def arp_request(cls, in_port: int, mac: str, spa: str, tpa: str) -> Packet:
        """A broadcast ARP request from ``mac``/``spa`` for ``tpa``."""
        return cls(
            in_port,
            eth_src=mac,
            eth_dst="ff:ff:ff:ff:ff:ff",
            eth_type=_ARP,
            arp_op=1,
            arp_spa=spa,
            arp_tpa=tpa,
            arp_sha=mac,
            arp_tha="00:00:00:00:00:00",
        )

    @classmethod
    def neighbor_solicitation(cls, in_port: int, mac: str, src: str, target: str) -> Packet:
        """An IPv6 neighbour solicitation for ``target`` carrying a source link-layer option."""
        return cls(
            in_port,
            eth_src=mac,
            eth_dst="33:33:ff:00:00:01",
            eth_type=_IP6,
            ip_src=src,
            ip_dst="ff02::1:ff00:1",
            ip_proto=58,
            icmp_type=135,
            icmp_code=0,
            nd_target=target,
            nd_sll=mac,
            nd_reserved=0,
            nd_options_type=1,
        )

    def reply(self, in_port: int, **kw) -> Packet:
        """The answer to this packet as it was delivered: addresses and ports swapped."""
        pkt = Packet(
            in_port,
            eth_src=self.eth_dst,
            eth_dst=self.eth_src,
            eth_type=self.eth_type,
            ip_src=self.ip_dst,
            ip_dst=self.ip_src,
            ip_proto=self.ip_proto,
            tp_src=self.tp_dst,
            tp_dst=self.tp_src,
            icmp_code=self.icmp_code,
            icmp_id=self.icmp_id,
            **kw,
        )
        if self.icmp_type is not None:
            pkt.icmp_type = _ECHO[self.ip_proto][1]
        return pkt

    def get(self, name: str):
        """The value of OXM field ``name``."""
        if name.startswith("reg"):
            return self.regs.get(int(name[3:]), 0)
        return getattr(self, _ATTRS.get(name, name))

    def set(self, name: str, value) -> None:
        """Set OXM field ``name``."""
        if name.startswith("reg"):
            self.regs[int(name[3:])] = value
            return
        attr = _ATTRS.get(name, name)
        if not hasattr(self, attr):
            raise KeyError(f"unknown field {name}")
        setattr(self, attr, value)

    def to_wire(self) -> Packet:
        """The packet as the next hop receives it: headers only, no metadata."""
        pkt = copy.deepcopy(self)
        pkt.regs, pkt.ct_state, pkt.ct_zone, pkt.ct_mark, pkt.ct_label = {}, 0, 0, 0, 0
        return pkt


def to_int(name: str, value) -> int:
    """The value of field ``name`` as an integer (addresses included)."""
    if name in _IP4_FIELDS or name in _IP6_FIELDS:
        return int(ipaddress.ip_address(value))
    if name in _MAC_FIELDS:
        return int(value.replace(":", ""), 16)
    return int(value)


def from_int(name: str, value: int):
    """The value of field ``name`` from an integer, in the field's own form."""
    if name in _IP4_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if name in _IP6_FIELDS:
        return str(ipaddress.IPv6Address(value))
    if name in _MAC_FIELDS:
        raw = f"{value:012x}"
        return ":".join(raw[i : i + 2] for i in range(0, 12, 2))
    return value


def matches(pkt: Packet, match: tuple) -> bool:
    """True when ``pkt`` matches every (masked) field of a canonical flow match."""
    for name, want in match:
        have = pkt.get(name)
        if have is None:
            return False
        if isinstance(want, tuple):
            value, mask = (to_int(name, want[0]), to_int(name, want[1]))
            if to_int(name, have) & mask != value & mask:
                return False
        elif to_int(name, have) != to_int(name, want):
            return False
    return True


def set_field(pkt: Packet, name: str, value) -> None:
    """Apply a set_field action (masked when ``value`` is a (value, mask) tuple)."""
    if isinstance(value, tuple):
        old = to_int(name, pkt.get(name) or 0)
        value = from_int(name, (old & ~value[1]) | (value[0] & value[1]))
    elif name in _IP4_FIELDS or name in _IP6_FIELDS:
        value = str(ipaddress.ip_address(value))
    pkt.set(name, value)


def move(pkt: Packet, act: spec.Move) -> None:
    """Apply a move (copy_field) action."""
    bits = (to_int(act.src, pkt.get(act.src)) >> act.src_ofs) & ((1 << act.n_bits) - 1)
    mask = ((1 << act.n_bits) - 1) << act.dst_ofs
    old = pkt.get(act.dst)
    old = 0 if old is None else to_int(act.dst, old)
    pkt.set(act.dst, from_int(act.dst, (old & ~mask) | (bits << act.dst_ofs)))
