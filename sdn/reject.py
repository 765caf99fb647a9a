"""Answers for rejected packets: a TCP RST, or an ICMP/ICMPv6 destination unreachable.

The answer comes from the address the client tried (a service IP with no instance, or an
unknown address of a semantic range), so the client's socket fails at once with
ECONNREFUSED (TCP, UDP port unreachable) or EHOSTUNREACH instead of timing out.
"""

from __future__ import annotations

import struct

ETH_IP = 0x0800
ETH_IPV6 = 0x86DD
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
# ICMP types that are errors themselves: never answered with another error (RFC 1122).
_ICMP_ERRORS = {3, 4, 5, 11, 12}
TTL = 64
_MAX_ICMP4_QUOTE = 548  # 576-byte datagram limit of RFC 1812
_MAX_ICMP6_QUOTE = 1280 - 40 - 8  # the error must fit the IPv6 minimum MTU


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, TTL, proto, 0, src, dst)
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + payload


def _ipv6(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, TTL, src, dst) + payload


def _l4_checksum(version: int, src: bytes, dst: bytes, proto: int, segment: bytes) -> int:
    if version == 4:
        pseudo = struct.pack("!4s4sBBH", src, dst, 0, proto, len(segment))
    else:
        pseudo = struct.pack("!16s16sIxxxB", src, dst, len(segment), proto)
    return checksum(pseudo + segment)


def _tcp_rst(version: int, src: bytes, dst: bytes, seg: bytes) -> bytes | None:
    """The RST answering TCP segment ``seg`` that went from ``dst`` to ``src`` (RFC 793)."""
    if len(seg) < 20:
        return None
    sport, dport, seq, ack, off_flags = struct.unpack_from("!HHIIH", seg)
    flags = off_flags & 0x3F
    if flags & TCP_RST:
        return None
    if flags & TCP_ACK:
        rst_seq, rst_ack, rst_flags = ack, 0, TCP_RST
    else:
        data_len = len(seg) - (off_flags >> 12) * 4
        span = max(data_len, 0) + bool(flags & TCP_SYN) + bool(flags & TCP_FIN)
        rst_seq, rst_ack, rst_flags = 0, (seq + span) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    head = struct.pack("!HHIIHHHH", dport, sport, rst_seq, rst_ack, (5 << 12) | rst_flags, 0, 0, 0)
    csum = _l4_checksum(version, src, dst, TCP, head)
    return head[:16] + struct.pack("!H", csum) + head[18:]


def reject_reply(frame: bytes) -> bytes | None:
    """The Ethernet frame that rejects ``frame``, or None when it must not be answered."""
    if len(frame) < 14:
        return None
    eth_dst, eth_src, eth_type = frame[0:6], frame[6:12], struct.unpack_from("!H", frame, 12)[0]
    if eth_src[0] & 1:
        return None  # never answer a multicast/broadcast source
    pkt = frame[14:]
    if eth_type == ETH_IP and len(pkt) >= 20:
        ihl = (pkt[0] & 0x0F) * 4
        total = struct.unpack_from("!H", pkt, 2)[0]
        pkt = pkt[:total] if 20 <= total <= len(pkt) else pkt
        proto, src, dst = pkt[9], pkt[12:16], pkt[16:20]
        frag = struct.unpack_from("!H", pkt, 6)[0] & 0x1FFF
        l4 = pkt[ihl:]
        if frag:
            return None  # only the first fragment carries the ports
        if proto == TCP:
            rst = _tcp_rst(4, dst, src, l4)
            reply = None if rst is None else _ipv4(dst, src, TCP, rst)
        else:
            if proto == ICMP and (not l4 or l4[0] in _ICMP_ERRORS):
                return None
            code = 3 if proto == UDP else 1  # port / host unreachable
            body = struct.pack("!BBHI", 3, code, 0, 0) + pkt[:_MAX_ICMP4_QUOTE]
            body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
            reply = _ipv4(dst, src, ICMP, body)
    elif eth_type == ETH_IPV6 and len(pkt) >= 40:
        plen = struct.unpack_from("!H", pkt, 4)[0]
        pkt = pkt[: 40 + plen] if 40 + plen <= len(pkt) else pkt
        proto, src, dst = pkt[6], pkt[8:24], pkt[24:40]
        l4 = pkt[40:]
        if proto == TCP:
            rst = _tcp_rst(6, dst, src, l4)
            reply = None if rst is None else _ipv6(dst, src, TCP, rst)
        else:
            if proto == ICMPV6 and (not l4 or l4[0] < 128):
                return None
            code = 4 if proto == UDP else 3  # port / address unreachable
            body = struct.pack("!BBHI", 1, code, 0, 0) + pkt[:_MAX_ICMP6_QUOTE]
            csum = _l4_checksum(6, dst, src, ICMPV6, body)
            body = body[:2] + struct.pack("!H", csum) + body[4:]
            reply = _ipv6(dst, src, ICMPV6, body)
    else:
        return None
    if reply is None:
        return None
    return eth_src + eth_dst + struct.pack("!H", eth_type) + reply
