"""Wire encodings os-ken lacks or gets wrong, for the OpenFlow 1.5 messages of ``sdn.ofmsg``.

- OXM TLVs written directly (os-ken's value normalisation costs ~0.1 ms per flow; a node with
  10k services installs ~60k flows), including OVS-only fields os-ken has no class for;
- NX actions padded to their declared length (os-ken leaves the padding out, which corrupts
  an action followed by another inside ct(...) or one that ends an action list);
- OVS's select-group selection-method property (os-ken has no class for it);
- flow-desc and group-desc reply entries read by their own lengths (os-ken reads properties,
  buckets and actions past the end of an entry).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from os_ken.lib import type_desc
from os_ken.lib.pack_utils import msg_pack_into
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as parser

# OVS fields os-ken does not know: name -> (OXM class, field number, value length).
# 0x1000 is the "ERICOXM_OF" class OVS uses for the ND fields (meta-flow.h).
EXTRA_FIELDS = {
    "nd_reserved": (0x1000, 1, 4),
    "nd_options_type": (0x1000, 2, 1),
}


# OVS's select-group "selection method" travels as an OF1.5 group property of experimenter type
# with the Netronome vendor id (OVS ofp-group.c, struct ntr_group_prop_selection_method):
# type, length, experimenter, exp_type, 4 pad bytes, a NUL-terminated 16-byte method name, a
# 64-bit parameter, then the hash fields as OXM TLVs whose values are bit masks, padded to a
# multiple of 8 bytes.
NTR_VENDOR_ID = 0x0000154D
NTRT_SELECTION_METHOD = 1
_SELECTION_METHOD_FMT = "!HHII4x16sQ"
SELECTION_METHODS = ("hash", "dp_hash")

# Field names the records may use besides os-ken's own OXM names.
FIELD_ALIASES = {
    "tun_id": "tunnel_id",
    "ip_src": "ipv4_src",
    "ip_dst": "ipv4_dst",
    "nw_proto": "ip_proto",
    "nd_target": "ipv6_nd_target",
    "nd_sll": "ipv6_nd_sll",
    "nd_tll": "ipv6_nd_tll",
}


class SpecError(ValueError):
    """A record that cannot be expressed as an OpenFlow message; the text says which part."""


def field_name(name: str) -> str:
    """The os-ken OXM name of a record's field name (aliases like ``tun_id`` resolved)."""
    return FIELD_ALIASES.get(name, name)


class NoFastPath(Exception):
    """A field FastMatch cannot encode (an experimenter OXM): os-ken's OFPMatch does it."""


@functools.cache
def oxm_codec(name: str) -> tuple[int, int, int, type]:
    """(OXM class, field number, value length, os-ken value type) of a field name."""
    num, vtype = ofp.oxm_get_field_info_by_name(name)
    head = bytearray()
    ofp.oxm_serialize_header(num, head, 0)
    oxm_class, field_bits, length = struct.unpack("!HBB", head[:4])
    if oxm_class == ofp.OFPXMC_EXPERIMENTER:
        raise NoFastPath(name)
    return oxm_class, field_bits >> 1, length, vtype


def oxm_value(vtype, length: int, value) -> bytes:
    """The wire bytes of one OXM value of os-ken type ``vtype``."""
    if vtype is type_desc.MacAddr:
        return bytes.fromhex(value.replace(":", ""))
    if vtype is type_desc.IPv4Addr:
        if isinstance(value, str):
            return socket.inet_pton(socket.AF_INET, value)
        return ipaddress.IPv4Address(value).packed
    if vtype is type_desc.IPv6Addr:
        if isinstance(value, str):
            return socket.inet_pton(socket.AF_INET6, value)
        return ipaddress.IPv6Address(value).packed
    return int(value).to_bytes(length, "big")


def _oxm_order(name: str) -> tuple[bool, str]:
    return (name not in ("eth_type", "ip_proto"), name)


def oxm_tlvs(fields: dict) -> bytes:
    """The OXM TLVs of ``fields``, prerequisites first (NoFastPath for experimenter OXMs)."""
    tlvs = bytearray()
    for name in sorted(fields, key=_oxm_order):
        oxm_class, field, length, vtype = oxm_codec(name)
        value = fields[name]
        if isinstance(value, tuple):
            tlvs += struct.pack("!HBB", oxm_class, field << 1 | 1, 2 * length)
            tlvs += oxm_value(vtype, length, value[0]) + oxm_value(vtype, length, value[1])
        else:
            tlvs += struct.pack("!HBB", oxm_class, field << 1, length)
            tlvs += oxm_value(vtype, length, value)
    return bytes(tlvs)


class FastMatch(parser.OFPMatch):
    """An OXM match encoded directly from the record's fields.

    os-ken's OFPMatch normalises every value through several layers (about 0.1 ms per flow);
    a node with 10k services installs ~60k flows, so the agent encodes the TLVs itself.
    """

    def __init__(self, tlvs: bytes, fields: dict):
        self._tlvs = tlvs
        self._fields2 = list(fields.items())
        self.type = ofp.OFPMT_OXM
        self.length = 4 + len(tlvs)

    @classmethod
    def of(cls, fields: dict) -> FastMatch:
        """Encode ``fields`` (prerequisites first, as os-ken orders them)."""
        return cls(oxm_tlvs(fields), fields)

    def serialize(self, buf, offset):
        """Write the ofp_match (padded to 8 bytes) at ``offset``; return its padded length."""
        data = struct.pack("!HH", ofp.OFPMT_OXM, self.length) + self._tlvs
        data += bytes(-len(data) % 8)
        msg_pack_into(f"!{len(data)}s", buf, offset, data)
        return len(data)


class PaddedNX:
    def serialize(self, buf, offset):
        super().serialize(buf, offset)
        end = offset + self.len
        if len(buf) < end:
            buf += bytearray(end - len(buf))


class CT(PaddedNX, parser.NXActionCT):
    def serialize_body(self):
        data = bytearray()
        zone_src = b"\x00" * 4
        msg_pack_into(
            self._fmt_str,
            data,
            0,
            self.flags,
            zone_src,
            self.zone_ofs_nbits,
            self.recirc_table,
            self.alg,
        )
        for act in self.actions:
            act.serialize(data, len(data))
        return data


class NAT(PaddedNX, parser.NXActionNAT):
    pass


class CTClear(PaddedNX, parser.NXActionCTClear):
    pass


class Resubmit(PaddedNX, parser.NXActionResubmitTable):
    pass


class RawSetField(parser.OFPAction):
    """A set_field action encoded here: fields os-ken does not know (EXTRA_FIELDS), and the
    others without os-ken's slow value normalisation (see FastMatch)."""

    cls_action_type = ofp.OFPAT_SET_FIELD
    cls_action_len = 8

    def __init__(self, name: str, value):
        super().__init__()
        if name in EXTRA_FIELDS:
            oxm_class, number, length = EXTRA_FIELDS[name]
            raw = int(value).to_bytes(length, "big")
        else:
            oxm_class, number, length, vtype = oxm_codec(name)
            raw = oxm_value(vtype, length, value)
        self.tlv = struct.pack("!HBB", oxm_class, number << 1, length) + raw
        self.len = (4 + len(self.tlv) + 7) // 8 * 8

    def serialize(self, buf, offset):
        """Write the action at ``offset`` of ``buf``."""
        data = struct.pack("!HH", self.type, self.len) + self.tlv
        msg_pack_into(f"!{self.len}s", buf, offset, data)


@dataclass(frozen=True)
class GroupImage:
    """A group as bytes on the wire, to compare what the switch holds with what is wanted."""

    group_id: int
    type: int
    buckets: tuple[bytes, ...]
    properties: bytes


def parse_group_desc(buf, offset: int = 0) -> tuple[GroupImage, int]:
    """One ofp_group_desc entry of a group-desc reply at ``offset``: its image and length.

    os-ken's own parser reads each entry's properties (and each bucket's) up to the end of the
    whole reply instead of the end of the entry, so it misreads replies with several groups.
    """
    length, gtype, group_id, bucket_len = struct.unpack_from(
        ofp.OFP_GROUP_DESC_STATS_PACK_STR, buf, offset
    )
    start = offset + ofp.OFP_GROUP_DESC_STATS_SIZE
    pos, end_buckets = start, start + bucket_len
    buckets = []
    while pos < end_buckets:
        (blen,) = struct.unpack_from("!H", buf, pos)
        if blen < ofp.OFP_BUCKET_SIZE:
            raise SpecError(f"group {group_id}: bucket length {blen} is too short")
        buckets.append(bytes(buf[pos : pos + blen]))
        pos += blen
    props = bytes(buf[end_buckets : offset + length])
    return GroupImage(group_id, gtype, tuple(buckets), props), length


class RawGroupDesc:
    """Body entry of OFPGroupDescStatsReply that keeps the entry's wire image (see above)."""

    def __init__(self, image: GroupImage, length: int):
        self.image = image
        self.length = length

    @classmethod
    def parser(cls, buf, offset):
        """Read one entry at ``offset``."""
        image, length = parse_group_desc(buf, offset)
        return cls(image, length)


@dataclass(frozen=True)
class RawFlowDesc:
    """Body entry of OFPFlowDescStatsReply: the parts of a flow the agent diffs by, and its
    packet counter and age when the switch sent them (None otherwise)."""

    length: int
    table_id: int
    priority: int
    cookie: int
    packet_count: int | None = None
    duration: float | None = None

    @classmethod
    def parser(cls, buf, offset):
        """Read one ofp_flow_desc at ``offset``.

        os-ken's parser of the flow's instructions fails on copy_field actions (it reads past
        the action), and the agent needs only the header and the statistics.
        """
        length, table_id, priority, _, _, _, _, cookie = struct.unpack_from(
            ofp.OFP_FLOW_DESC_0_PACK_STR, buf, offset
        )
        end = offset + length
        pos = offset + ofp.OFP_FLOW_DESC_0_SIZE
        packets = duration = None
        if pos + 4 <= end:
            (match_len,) = struct.unpack_from("!H", buf, pos + 2)
            pos += (match_len + 7) // 8 * 8
        if pos + 4 <= end:
            (stats_len,) = struct.unpack_from("!H", buf, pos + 2)
            packets, duration = _oxs_stats(buf, pos + 4, min(pos + stats_len, end))
        return cls(length, table_id, priority, cookie, packets, duration)


def _oxs_stats(buf, pos: int, end: int) -> tuple[int | None, float | None]:
    """(packet count, duration in s) from the OXS fields of an ofp_stats."""
    packets = duration = None
    while pos + 4 <= end:
        oxs_class, field_bits, size = struct.unpack_from("!HBB", buf, pos)
        value = pos + 4
        if oxs_class == ofp.OFPXSC_OPENFLOW_BASIC and value + size <= end:
            kind = field_bits >> 1
            if kind == ofp.OFPXST_OFB_PACKET_COUNT and size == 8:
                (packets,) = struct.unpack_from("!Q", buf, value)
            elif kind == ofp.OFPXST_OFB_DURATION and size == 8:
                sec, nsec = struct.unpack_from("!II", buf, value)
                duration = sec + nsec / 1e9
        pos = value + size
    return packets, duration


def use_raw_stats_parsers() -> None:
    """Make os-ken parse flow-desc and group-desc replies into RawFlowDesc / RawGroupDesc."""
    parser.OFPGroupDescStatsReply.cls_stats_body_cls = RawGroupDesc
    parser.OFPFlowDescStatsReply.cls_stats_body_cls = RawFlowDesc


def _hash_field(name: str) -> bytes:
    # OVS reads each hash field as a full OXM TLV whose value is the mask of the bits to hash;
    # all ones hashes the whole field.
    try:
        header = ofp.oxm_from_user_header(field_name(name))
    except KeyError:
        raise SpecError(f"unknown hash field {name!r}") from None
    buf = bytearray()
    ofp.oxm_serialize_header(header, buf, 0)
    oxm_class, _, length = struct.unpack("!HBB", buf)
    if oxm_class != ofp.OFPXMC_OPENFLOW_BASIC:
        raise SpecError(f"hash field {name!r} is not an OpenFlow basic field")
    return bytes(buf) + b"\xff" * length


def selection_method_property(method: str, fields: Sequence[str] = (), param: int = 0) -> bytes:
    """The bytes of OVS's NTR selection-method group property."""
    if method not in SELECTION_METHODS:
        raise SpecError(f"selection_method {method!r} is not one of {SELECTION_METHODS}")
    if fields and method != "hash":
        raise SpecError(f"selection_method {method} takes no fields")
    oxm = b"".join(_hash_field(f) for f in fields)
    length = struct.calcsize(_SELECTION_METHOD_FMT) + len(oxm)
    body = (
        struct.pack(
            _SELECTION_METHOD_FMT,
            ofp.OFPGPT_EXPERIMENTER,
            length,
            NTR_VENDOR_ID,
            NTRT_SELECTION_METHOD,
            method.encode(),
            param,
        )
        + oxm
    )
    return body + bytes(-len(body) % 8)


class RawGroupProp:
    """A group property given as its wire bytes (os-ken has no class for OVS's)."""

    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> bytes:
        """The property's bytes."""
        return self.data
