"""The fake switch's conntrack: zones, commit, DNAT/SNAT, reply direction, ICMP errors, marks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdn import spec
from sdn.faketable_packet import to_int

if TYPE_CHECKING:
    from sdn.faketable_packet import Packet

# (ip_proto, src, sport, dst, dport); ICMP echo carries its identifier in both port slots.
Tuple5 = tuple

ICMP_ERRORS = {1: {3, 4, 5, 11, 12}, 58: {1, 2, 3, 4}}
ECHO_REPLIES = {1: 0, 58: 129}


def norm(addr: str) -> str:
    """An IP address in its canonical text form."""
    return str(ipaddress.ip_address(addr))


def packet_tuple(pkt: Packet) -> Tuple5:
    """The conntrack tuple of ``pkt``."""
    if pkt.ip_proto in (6, 17):
        return (pkt.ip_proto, norm(pkt.ip_src), pkt.tp_src, norm(pkt.ip_dst), pkt.tp_dst)
    ident = pkt.icmp_id or 0
    return (pkt.ip_proto, norm(pkt.ip_src), ident, norm(pkt.ip_dst), ident)


def invert(t: Tuple5) -> Tuple5:
    """The tuple of a packet going the other way."""
    return (t[0], t[3], t[4], t[1], t[2])


def _apply(pkt: Packet, t: Tuple5) -> None:
    pkt.ip_src, pkt.ip_dst = t[1], t[3]
    if pkt.ip_proto in (6, 17):
        pkt.tp_src, pkt.tp_dst = t[2], t[4]
    elif pkt.icmp_id is not None:
        pkt.icmp_id = t[2]


@dataclass
class Conn:
    """One committed connection: its original and reply tuples in one zone, and its marks."""

    zone: int
    orig: Tuple5
    reply: Tuple5
    mark: int = 0
    label: int = 0


class Conntrack:
    """Connections per zone, looked up by either direction's tuple."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, Tuple5], tuple[Conn, bool]] = {}

    def connections(self, zone: int | None = None) -> list[Conn]:
        """The committed connections (of one zone, or all)."""
        seen = {id(c): c for c, _ in self._entries.values() if zone in (None, c.zone)}
        return list(seen.values())

    def execute(self, pkt: Packet, act: spec.Ct) -> None:
        """Run ``pkt`` through ct action ``act``: state, commit, exec, NAT."""
        zone = act.zone
        related = (
            pkt.ip_proto in ICMP_ERRORS
            and pkt.icmp_type in ICMP_ERRORS[pkt.ip_proto]
            and pkt.inner is not None
        )
        key = invert(packet_tuple(pkt.inner)) if related else packet_tuple(pkt)
        hit = self._entries.get((zone, key))
        conn, is_reply = hit if hit else (None, False)
        if conn is not None:
            state = (spec.CT_REL if related else spec.CT_EST) | (spec.CT_RPL if is_reply else 0)
        elif related or (
            pkt.icmp_type is not None and pkt.icmp_type == ECHO_REPLIES.get(pkt.ip_proto)
        ):
            state = spec.CT_INV
        else:
            state = spec.CT_NEW
        if state == spec.CT_NEW and act.commit:
            conn = self._commit(zone, key, act.nat)
        if conn is not None and act.commit:
            for sub in act.exec_:
                self._exec(pkt, conn, sub)
        if conn is not None and act.nat is not None:
            self._translate(pkt, conn, is_reply, related)
        pkt.ct_state = state | spec.CT_TRK
        pkt.ct_zone = zone
        pkt.ct_mark = conn.mark if conn else 0
        pkt.ct_label = conn.label if conn else 0

    def _commit(self, zone: int, t: Tuple5, nat: spec.Nat | None) -> Conn:
        out = t
        if nat is not None and nat.kind == "dst":
            out = (t[0], t[1], t[2], norm(nat.addr), nat.port or t[4])
        elif nat is not None and nat.kind == "src":
            out = (t[0], norm(nat.addr), nat.port or t[2], t[3], t[4])
        conn = Conn(zone, t, invert(out))
        for k, is_reply in ((t, False), (conn.reply, True)):
            if (zone, k) in self._entries:
                raise AssertionError(f"conntrack zone {zone}: tuple {k} is taken")
            self._entries[(zone, k)] = (conn, is_reply)
        return conn

    @staticmethod
    def _exec(pkt: Packet, conn: Conn, act) -> None:
        name = act.field if isinstance(act, spec.SetField) else act.dst
        if name not in ("ct_mark", "ct_label"):
            raise AssertionError(f"ct exec may only write ct_mark or ct_label, not {name}")
        old = conn.mark if name == "ct_mark" else conn.label
        if isinstance(act, spec.SetField):
            value, mask = act.value if isinstance(act.value, tuple) else (act.value, -1)
            new = (old & ~mask) | (value & mask)
        else:
            bits = (to_int(act.src, pkt.get(act.src)) >> act.src_ofs) & ((1 << act.n_bits) - 1)
            mask = ((1 << act.n_bits) - 1) << act.dst_ofs
            new = (old & ~mask) | (bits << act.dst_ofs)
        if name == "ct_mark":
            conn.mark = new & 0xFFFFFFFF
        else:
            conn.label = new

    @staticmethod
    def _translate(pkt: Packet, conn: Conn, is_reply: bool, related: bool) -> None:
        before, after = (
            (conn.reply, invert(conn.orig)) if is_reply else (conn.orig, invert(conn.reply))
        )
        if not related:
            _apply(pkt, after)
            return
        # An ICMP error: the outer addresses that belong to the connection are translated
        # like a packet of its direction; the quoted packet went the other way.
        if norm(pkt.ip_src) == before[1]:
            pkt.ip_src = after[1]
        if norm(pkt.ip_dst) == before[3]:
            pkt.ip_dst = after[3]
        _apply(pkt.inner, conn.orig if is_reply else conn.reply)
