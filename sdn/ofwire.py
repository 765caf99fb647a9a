"""OpenFlow 1.5 wire bytes of flow mods, group mods and bundles, straight from ``sdn.spec``.

A node with 10k services installs ~70k flows and ~10k groups. Building an os-ken message
object per entry and serialising it costs ~0.1 ms each (seconds per full install), so the
switch side encodes the bytes here instead: the common actions with ``struct``, the rare ones
through ``sdn.ofmsg`` once (cached). The bytes are the same as ``sdn.ofmsg`` produces; the unit
tests compare both encodings entry by entry.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Iterable, Iterator, Sequence

from os_ken.ofproto import nicira_ext, ofproto_common
from os_ken.ofproto import ofproto_v1_5 as ofp

from sdn import ofmsg, spec
from sdn.ofcodec import (
    GroupImage,
    NoFastPath,
    RawSetField,
    SpecError,
    field_name,
    oxm_codec,
    oxm_value,
    selection_method_property,
)

VERSION = ofp.OFP_VERSION
_FLOW_MOD = struct.Struct("!BBHIQQBBHHHIIIHH")
_GROUP_MOD = struct.Struct("!BBHIHBxIH2xI")
_BUCKET = struct.Struct("!HHI")
_BUNDLE_ADD = struct.Struct("!BBHII2xH")
# OpenFlow lengths are 16 bits, and a bundled message travels inside a bundle-add message.
MAX_BUNDLED_MESSAGE = 0xFFFF - _BUNDLE_ADD.size
_BUNDLE_CTRL = struct.Struct("!BBHIIHH")
_OUTPUT = struct.Struct("!HHIH6x")
_GROUP = struct.Struct("!HHI")
_APPLY = struct.Struct("!HH4x")
_GOTO = struct.Struct("!HHB3x")
_PROP = struct.Struct("!HHH2x")
_WATCH = struct.Struct("!HHI")
_NX_CT = struct.Struct("!HHIHH4sHB3xH")
_NX_NAT = struct.Struct("!HHIH2xHH")
_MATCH_HEAD = struct.Struct("!HH")

_NO_BUFFER = ofp.OFP_NO_BUFFER
_BUNDLE_FLAGS = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
_ALL_COOKIE_BITS = 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Messages


def flow_add(flow: spec.Flow, xid: int = 0) -> bytes:
    """The OFPT_FLOW_MOD (OFPFC_ADD) of ``flow``, as ``sdn.ofmsg.flow_add`` encodes it."""
    match = match_bytes(flow.match)
    inst = instructions_bytes(flow.actions)
    length = _FLOW_MOD.size + len(match) + len(inst)
    head = _FLOW_MOD.pack(
        VERSION,
        ofp.OFPT_FLOW_MOD,
        length,
        xid,
        flow.cookie,
        0,
        flow.table,
        ofp.OFPFC_ADD,
        0,
        0,
        flow.priority,
        _NO_BUFFER,
        0,
        0,
        0,
        0,
    )
    return head + match + inst


def flow_delete_cookie(cookie: int, table_id: int = ofp.OFPTT_ALL, xid: int = 0) -> bytes:
    """A delete of every flow carrying exactly ``cookie`` (in ``table_id`` or all tables)."""
    match = _EMPTY_MATCH
    head = _FLOW_MOD.pack(
        VERSION,
        ofp.OFPT_FLOW_MOD,
        _FLOW_MOD.size + len(match),
        xid,
        cookie,
        _ALL_COOKIE_BITS,
        table_id,
        ofp.OFPFC_DELETE,
        0,
        0,
        ofp.OFP_DEFAULT_PRIORITY,
        _NO_BUFFER,
        ofp.OFPP_ANY,
        ofp.OFPG_ANY,
        0,
        0,
    )
    return head + match


def group_mod(group: spec.GroupSpec, command: int = ofp.OFPGC_ADD, xid: int = 0) -> bytes:
    """The OFPT_GROUP_MOD adding (or with ``command``, replacing) ``group``."""
    gtype, buckets, props = group_parts(group)
    body = b"".join(buckets)
    length = _GROUP_MOD.size + len(body) + len(props)
    if length > MAX_BUNDLED_MESSAGE:
        raise SpecError(
            f"group {group.group_id:#x}: {len(buckets)} buckets make {length} bytes, more than "
            f"one OpenFlow message holds in a bundle ({MAX_BUNDLED_MESSAGE})"
        )
    head = _GROUP_MOD.pack(
        VERSION,
        ofp.OFPT_GROUP_MOD,
        length,
        xid,
        command,
        gtype,
        group.group_id,
        len(body),
        ofp.OFPG_BUCKET_ALL,
    )
    return head + body + props


def group_delete(group_id: int, xid: int = 0) -> bytes:
    """The OFPT_GROUP_MOD deleting group ``group_id``."""
    return _GROUP_MOD.pack(
        VERSION,
        ofp.OFPT_GROUP_MOD,
        _GROUP_MOD.size,
        xid,
        ofp.OFPGC_DELETE,
        ofp.OFPGT_ALL,
        group_id,
        0,
        ofp.OFPG_BUCKET_ALL,
    )


def group_parts(group: spec.GroupSpec) -> tuple[int, list[bytes], bytes]:
    """(OpenFlow group type, each bucket's bytes, the properties' bytes) of ``group``."""
    try:
        gtype = ofmsg.GROUP_TYPES[group.type]
    except KeyError:
        raise SpecError(
            f"group type {group.type!r} is not one of {list(ofmsg.GROUP_TYPES)}"
        ) from None
    props = b""
    if group.selection_method is not None:
        if group.type != "select":
            raise SpecError("selection_method is only for select groups")
        props = _selection_property(group.selection_method, tuple(group.fields))
    select = group.type == "select"
    buckets = []
    for index, bucket in enumerate(group.buckets):
        actions = actions_bytes(bucket.actions)
        extra = b""
        if select:
            extra += _PROP.pack(ofp.OFPGBPT_WEIGHT, 8, bucket.weight)
        if bucket.watch_port is not None:
            extra += _WATCH.pack(ofp.OFPGBPT_WATCH_PORT, 8, bucket.watch_port)
        bucket_id = index if bucket.bucket_id is None else bucket.bucket_id
        if not 0 <= bucket_id < ofp.OFPG_BUCKET_MAX:
            raise SpecError(f"group {group.group_id:#x}: bucket id {bucket_id} out of range")
        head = _BUCKET.pack(_BUCKET.size + len(actions) + len(extra), len(actions), bucket_id)
        buckets.append(head + actions + extra)
    return gtype, buckets, props


def bundle(bundle_id: int, msgs: Sequence[bytes], first_xid: int) -> tuple[list[bytes], int]:
    """Open, one add per message of ``msgs`` (each re-stamped with its own xid), commit.

    Xids run from ``first_xid`` (modulo 2**32); returns the parts and the commit's xid.
    """
    parts = list(bundle_parts(bundle_id, msgs, first_xid))
    return parts, struct.unpack_from("!I", parts[-1], 4)[0]


def bundle_parts(bundle_id: int, msgs: Iterable[bytes], first_xid: int) -> Iterator[bytes]:
    """``bundle`` as a generator: each part is made when asked for (nothing held at once)."""
    xid = first_xid & 0xFFFFFFFF
    yield bundle_ctrl(bundle_id, ofp.OFPBCT_OPEN_REQUEST, xid)
    add_len = _BUNDLE_ADD.size
    for msg in msgs:
        xid = (xid + 1) & 0xFFFFFFFF
        # OpenFlow wants the inner message's xid to be the outer one's.
        inner = msg[:4] + xid.to_bytes(4, "big") + msg[8:]
        yield (
            _BUNDLE_ADD.pack(
                VERSION,
                ofp.OFPT_BUNDLE_ADD_MESSAGE,
                add_len + len(inner),
                xid,
                bundle_id,
                _BUNDLE_FLAGS,
            )
            + inner
        )
    yield bundle_ctrl(bundle_id, ofp.OFPBCT_COMMIT_REQUEST, (xid + 1) & 0xFFFFFFFF)


def bundle_ctrl(bundle_id: int, kind: int, xid: int) -> bytes:
    """A bundle control request (open, commit, discard) of bundle ``bundle_id``."""
    return _BUNDLE_CTRL.pack(
        VERSION, ofp.OFPT_BUNDLE_CONTROL, _BUNDLE_CTRL.size, xid, bundle_id, kind, _BUNDLE_FLAGS
    )


# ---------------------------------------------------------------------------------------------
# Matches


def match_bytes(match: tuple) -> bytes:
    """The padded ofp_match of a record's canonical match (prerequisites filled in)."""
    try:
        plan = _match_plan(tuple(name for name, _ in match))
    except SpecError:
        ofmsg.match_fields(dict(match))  # the same refusal, naming the values
        raise
    if plan is None:
        return _match_via_ofmsg(match)
    tlvs = []
    try:
        for head, masked_head, length, vtype, slot, const in plan:
            if slot is None:
                tlvs.append(const)
                continue
            value = match[slot][1]
            if isinstance(value, tuple):
                tlvs.append(masked_head)
                tlvs.append(oxm_value(vtype, length, value[0]))
                tlvs.append(oxm_value(vtype, length, value[1]))
            else:
                tlvs.append(head)
                tlvs.append(oxm_value(vtype, length, value))
    except (KeyError, TypeError, ValueError, OSError, AttributeError) as exc:
        raise SpecError(f"match {dict(match)!r}: {exc}") from None
    body = b"".join(tlvs)
    length = 4 + len(body)
    return _MATCH_HEAD.pack(ofp.OFPMT_OXM, length) + body + bytes(-length % 8)


class _Slot:
    """Stands for the value of the match's field number ``index`` while a plan is made."""

    def __init__(self, index: int):
        self.index = index


@functools.lru_cache(maxsize=1024)
def _match_plan(names: tuple[str, ...]) -> tuple | None:
    """How to encode a match with these field names (few shapes, many matches): per OXM in
    wire order its headers, value length and type, and the match's value slot or the constant
    TLV of a prerequisite; None when a field needs os-ken's own encoder."""
    fields = ofmsg.match_fields({name: _Slot(i) for i, name in enumerate(names)})
    plan = []
    try:
        for name in sorted(fields, key=_oxm_order):
            oxm_class, number, length, vtype = oxm_codec(name)
            head = struct.pack("!HBB", oxm_class, number << 1, length)
            masked = struct.pack("!HBB", oxm_class, number << 1 | 1, 2 * length)
            value = fields[name]
            if isinstance(value, _Slot):
                plan.append((head, masked, length, vtype, value.index, None))
            else:
                const = head + oxm_value(vtype, length, value)
                plan.append((head, masked, length, vtype, None, const))
    except NoFastPath:
        return None
    except KeyError as exc:
        raise SpecError(f"match on {', '.join(names)}: unknown field {exc}") from None
    return tuple(plan)


def _oxm_order(name: str) -> tuple[bool, str]:
    # Prerequisites first, as os-ken orders them.
    return (name not in ("eth_type", "ip_proto"), name)


def _match_via_ofmsg(match: tuple) -> bytes:
    buf = bytearray()
    ofmsg.make_match(dict(match)).serialize(buf, 0)
    return bytes(buf)


_EMPTY_MATCH = _MATCH_HEAD.pack(ofp.OFPMT_OXM, 4) + bytes(4)


# ---------------------------------------------------------------------------------------------
# Actions and instructions


def instructions_bytes(actions: Sequence) -> bytes:
    """Apply-actions (unless empty) and an optional final goto, as ``make_instructions``."""
    goto = None
    plain = actions
    if plain and isinstance(plain[-1], spec.GotoTable):
        goto = plain[-1]
        plain = plain[:-1]
    out = b""
    if plain:
        acts = actions_bytes(plain)
        out = _APPLY.pack(ofp.OFPIT_APPLY_ACTIONS, _APPLY.size + len(acts)) + acts
    if goto is not None:
        out += _GOTO.pack(ofp.OFPIT_GOTO_TABLE, _GOTO.size, goto.table)
    return out


def actions_bytes(actions: Iterable) -> bytes:
    """The action list of ``actions`` (no GotoTable)."""
    return b"".join(action_bytes(a) for a in actions)


def action_bytes(act) -> bytes:
    """One spec action's bytes."""
    kind = type(act)
    if kind is spec.Ct:
        return _ct(act)
    if kind is spec.Group:
        return _GROUP.pack(ofp.OFPAT_GROUP, _GROUP.size, act.group_id)
    if kind is spec.Output:
        max_len = 0xFFFF if act.port == spec.CONTROLLER else 0
        return _OUTPUT.pack(ofp.OFPAT_OUTPUT, _OUTPUT.size, act.port, max_len)
    if kind is spec.SetField:
        return _set_field(act.field, act.value)
    if kind is spec.GotoTable:
        raise SpecError("goto_table must be the last action of a flow, not in a bucket")
    return _via_ofmsg(act)


@functools.lru_cache(maxsize=4096)
def _set_field(name: str, value) -> bytes:
    buf = bytearray()
    try:
        RawSetField(field_name(name), value).serialize(buf, 0)
    except (NoFastPath, KeyError, TypeError, ValueError, OSError):
        # os-ken's encoder takes what this one cannot, or says what is wrong with it.
        return _via_ofmsg(spec.SetField(name, value))
    return bytes(buf)


@functools.lru_cache(maxsize=1024)
def _via_ofmsg(act) -> bytes:
    """Actions without a direct encoder here (moves, resubmit, ...): os-ken's bytes, once."""
    buf = bytearray()
    ofmsg.make_action(act).serialize(buf, 0)
    return bytes(buf)


def _ct(act: spec.Ct) -> bytes:
    nested = b""
    if act.nat is not None:
        nested = _nat(act.nat)
    for sub in act.exec_:
        if type(sub) not in (spec.SetField, spec.Move):
            raise SpecError(f"ct exec holds {sub!r}; only SetField and Move are allowed there")
        nested += action_bytes(sub)
    if not 0 <= act.zone <= 0xFFFF:
        raise SpecError(f"ct zone {act.zone} is not 16-bit")
    table = nicira_ext.NX_CT_RECIRC_NONE if act.table is None else act.table
    flags = nicira_ext.NX_CT_F_COMMIT if act.commit else 0
    length = _NX_CT.size + len(nested)
    head = _NX_CT.pack(
        ofp.OFPAT_EXPERIMENTER,
        length,
        ofproto_common.NX_EXPERIMENTER_ID,
        nicira_ext.NXAST_CT,
        flags,
        bytes(4),
        act.zone,
        table,
        0,
    )
    return head + nested


def _nat(nat: spec.Nat) -> bytes:
    if nat.kind is None:
        flags = 0
    elif nat.kind == "src":
        flags = ofmsg.NX_NAT_F_SRC
    elif nat.kind == "dst":
        flags = ofmsg.NX_NAT_F_DST
    else:
        raise SpecError(f"nat kind {nat.kind!r} is not 'src' or 'dst'")
    present = 0
    optional = b""
    if nat.kind is not None and nat.addr is not None:
        packed = _packed_ip(nat.addr)
        present = (
            nicira_ext.NX_NAT_RANGE_IPV4_MIN
            if len(packed) == 4
            else nicira_ext.NX_NAT_RANGE_IPV6_MIN
        )
        optional = packed
    if nat.kind is not None and nat.port is not None:
        present |= nicira_ext.NX_NAT_RANGE_PROTO_MIN
        optional += nat.port.to_bytes(2, "big")
    length = _NX_NAT.size + len(optional)
    padded = (length + 7) // 8 * 8
    head = _NX_NAT.pack(
        ofp.OFPAT_EXPERIMENTER,
        padded,
        ofproto_common.NX_EXPERIMENTER_ID,
        nicira_ext.NXAST_NAT,
        flags,
        present,
    )
    return head + optional + bytes(padded - length)


@functools.lru_cache(maxsize=65536)
def _packed_ip(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


@functools.lru_cache(maxsize=64)
def _selection_property(method: str, fields: tuple) -> bytes:
    return selection_method_property(method, fields)


def group_image(group: spec.GroupSpec) -> GroupImage:
    """The wire image of ``group`` as its group mod carries it (see ``ofcodec.GroupImage``)."""
    gtype, buckets, props = group_parts(group)
    return GroupImage(group.group_id, gtype, tuple(buckets), props)
