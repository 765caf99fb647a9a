"""Turn the switch-neutral records of ``sdn.spec`` into os-ken OpenFlow 1.5 messages."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as parser

from sdn import spec
from sdn.ofcodec import (
    CT,
    FIELD_ALIASES,
    NAT,
    CTClear,
    FastMatch,
    GroupImage,
    NoFastPath,
    RawGroupProp,
    RawSetField,
    Resubmit,
    SpecError,
    field_name,
    selection_method_property,
)

# Flags of the NX nat action (OVS nicira-ext.h, enum nx_nat_flags).
NX_NAT_F_SRC = 1 << 0
NX_NAT_F_DST = 1 << 1

# The NX resubmit action takes a 16-bit port; this is OpenFlow 1.0's IN_PORT.
_NX_IN_PORT = 0xFFF8

GROUP_TYPES = {
    "all": ofp.OFPGT_ALL,
    "select": ofp.OFPGT_SELECT,
    "indirect": ofp.OFPGT_INDIRECT,
    "fast_failover": ofp.OFPGT_FF,
}

_ETH_IP = 0x0800
_ETH_ARP = 0x0806
_ETH_IPV6 = 0x86DD
_PROTO_OF_PREFIX = {"tcp_": 6, "udp_": 17, "sctp_": 132, "icmpv4_": 1, "icmpv6_": 58}


# ---------------------------------------------------------------------------------------------
# Matches


@functools.cache
def _prerequisites(name: str) -> tuple[int | None, int | None]:
    """(eth_type, ip_proto) that a match on field ``name`` implies (None: none/ambiguous)."""
    eth = None
    if name.startswith(("ipv4_", "icmpv4_")):
        eth = _ETH_IP
    elif name.startswith(("ipv6_", "icmpv6_")):
        eth = _ETH_IPV6
    elif name.startswith("arp_"):
        eth = _ETH_ARP
    proto = next((p for pre, p in _PROTO_OF_PREFIX.items() if name.startswith(pre)), None)
    return eth, proto


def match_fields(match: dict) -> dict:
    """The OXM fields of a record's match, with the prerequisites OpenFlow needs filled in."""
    fields = {FIELD_ALIASES.get(k, k): v for k, v in match.items()}
    eth = proto = None
    for name in fields:
        e, p = _prerequisites(name)
        eth = eth or e
        proto = proto or p
    if proto is not None and "ip_proto" not in fields:
        fields["ip_proto"] = proto
    if "ip_proto" in fields and eth is None and "eth_type" not in fields:
        if proto == 1:
            eth = _ETH_IP
        elif proto == 58:
            eth = _ETH_IPV6
        else:
            raise SpecError(f"match {match!r}: an L4 field needs eth_type (IPv4 or IPv6?)")
    if eth is not None and "eth_type" not in fields:
        fields["eth_type"] = eth
    return fields


def make_match(match: dict) -> parser.OFPMatch:
    """An OFPMatch from a record's match dict (masked fields are ``(value, mask)`` tuples)."""
    fields = match_fields(match)
    try:
        return FastMatch.of(fields)
    except NoFastPath:
        pass
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise SpecError(f"match {match!r}: {exc}") from None
    try:
        return parser.OFPMatch(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"match {match!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Actions


def _nat_action(nat: spec.Nat):
    if nat.kind is None:
        return NAT(0)
    if nat.kind not in ("src", "dst"):
        raise SpecError(f"nat kind {nat.kind!r} is not 'src' or 'dst'")
    flags = NX_NAT_F_SRC if nat.kind == "src" else NX_NAT_F_DST
    kwargs = {}
    if nat.addr is not None:
        addr = ipaddress.ip_address(nat.addr)
        key = "range_ipv4_min" if addr.version == 4 else "range_ipv6_min"
        kwargs[key] = str(addr)
    if nat.port is not None:
        kwargs["range_proto_min"] = nat.port
    return NAT(flags, **kwargs)


def _set_field(act: spec.SetField):
    name = field_name(act.field)
    try:
        return RawSetField(name, act.value)
    except NoFastPath:
        pass
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise SpecError(f"set_field {act.field}={act.value!r}: {exc}") from None
    try:
        return parser.OFPActionSetField(**{field_name(act.field): act.value})
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"set_field {act.field}={act.value!r}: {exc}") from None


def _ct_action(act: spec.Ct):
    nested = []
    if act.nat is not None:
        nested.append(_nat_action(act.nat))
    for sub in act.exec_:
        if not isinstance(sub, (spec.SetField, spec.Move)):
            raise SpecError(f"ct exec holds {sub!r}; only SetField and Move are allowed there")
        nested.append(make_action(sub))
    if not 0 <= act.zone <= 0xFFFF:
        raise SpecError(f"ct zone {act.zone} is not 16-bit")
    table = nicira_ext.NX_CT_RECIRC_NONE if act.table is None else act.table
    flags = nicira_ext.NX_CT_F_COMMIT if act.commit else 0
    return CT(flags, None, act.zone, table, 0, nested)


def make_action(act) -> object:
    """The os-ken action of one spec action (not GotoTable, which is an instruction)."""
    if isinstance(act, spec.Output):
        max_len = 0xFFFF if act.port == spec.CONTROLLER else 0
        return parser.OFPActionOutput(act.port, max_len)
    if isinstance(act, spec.SetField):
        return _set_field(act)
    if isinstance(act, spec.Move):
        # OVS takes NX reg_move only up to OF1.4; OF1.5 has copy_field for it.
        return parser.OFPActionCopyField(
            act.n_bits, act.src_ofs, act.dst_ofs, [field_name(act.src), field_name(act.dst)]
        )
    if isinstance(act, spec.Ct):
        return _ct_action(act)
    if isinstance(act, spec.CtClear):
        return CTClear()
    if isinstance(act, spec.Group):
        return parser.OFPActionGroup(act.group_id)
    if isinstance(act, spec.Resubmit):
        return Resubmit(_NX_IN_PORT, act.table)
    if isinstance(act, spec.Controller):
        return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, act.max_len)
    if isinstance(act, spec.DecTtl):
        return parser.OFPActionDecNwTtl()
    raise SpecError(f"no OpenFlow translation for action {act!r}")


def make_actions(actions: Iterable) -> list:
    """os-ken actions of a list of spec actions (GotoTable is not allowed here)."""
    out = []
    for act in actions:
        if isinstance(act, spec.GotoTable):
            raise SpecError("goto_table is not allowed in a group bucket")
        out.append(make_action(act))
    return out


def make_instructions(actions: Sequence) -> list:
    """The instructions of a flow: its actions applied, then an optional goto as the last step."""
    goto = None
    plain = list(actions)
    if plain and isinstance(plain[-1], spec.GotoTable):
        goto = plain.pop()
    if any(isinstance(a, spec.GotoTable) for a in plain):
        raise SpecError("goto_table must be the last action of a flow")
    inst = []
    if plain:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, make_actions(plain)))
    if goto is not None:
        inst.append(parser.OFPInstructionGotoTable(goto.table))
    return inst


# ---------------------------------------------------------------------------------------------
# Flow mods


def flow_add(dp, flow: spec.Flow) -> parser.OFPFlowMod:
    """An OFPFC_ADD for ``flow`` (replaces an entry with the same table, priority and match)."""
    return parser.OFPFlowMod(
        dp,
        cookie=flow.cookie,
        table_id=flow.table,
        command=ofp.OFPFC_ADD,
        priority=flow.priority,
        match=make_match(flow.match_dict()),
        instructions=make_instructions(flow.actions),
    )


def flow_delete_cookie(dp, cookie: int, table_id: int = ofp.OFPTT_ALL) -> parser.OFPFlowMod:
    """A delete of every flow carrying exactly ``cookie`` (in ``table_id`` or all tables)."""
    return parser.OFPFlowMod(
        dp,
        cookie=cookie,
        cookie_mask=0xFFFFFFFFFFFFFFFF,
        table_id=table_id,
        command=ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch(),
    )


# ---------------------------------------------------------------------------------------------
# Groups


def make_buckets(group: spec.GroupSpec) -> list:
    """os-ken buckets of a group: ids by position unless given, weight/watch as OVS reports."""
    gtype = group.type
    out = []
    for index, bucket in enumerate(group.buckets):
        props = []
        if gtype == "select":
            props.append(
                parser.OFPGroupBucketPropWeight(type_=ofp.OFPGBPT_WEIGHT, weight=bucket.weight)
            )
        if bucket.watch_port is not None:
            props.append(
                parser.OFPGroupBucketPropWatch(
                    type_=ofp.OFPGBPT_WATCH_PORT, watch=bucket.watch_port
                )
            )
        bucket_id = index if bucket.bucket_id is None else bucket.bucket_id
        out.append(parser.OFPBucket(bucket_id, make_actions(bucket.actions), props))
    return out


def group_mod(dp, group: spec.GroupSpec, command: int = ofp.OFPGC_ADD) -> parser.OFPGroupMod:
    """An OFPT_GROUP_MOD adding or (with OFPGC_MODIFY) replacing ``group`` as a whole."""
    try:
        gtype = GROUP_TYPES[group.type]
    except KeyError:
        raise SpecError(f"group type {group.type!r} is not one of {list(GROUP_TYPES)}") from None
    props = []
    if group.selection_method is not None:
        if group.type != "select":
            raise SpecError("selection_method is only for select groups")
        props.append(RawGroupProp(selection_method_property(group.selection_method, group.fields)))
    return parser.OFPGroupMod(
        dp, command, gtype, group.group_id, buckets=make_buckets(group), properties=props
    )


def group_delete(dp, group_id: int) -> parser.OFPGroupMod:
    """An OFPT_GROUP_MOD deleting group ``group_id`` (and, by OpenFlow, flows that use it)."""
    return parser.OFPGroupMod(dp, ofp.OFPGC_DELETE, ofp.OFPGT_ALL, group_id)


def group_image(group: spec.GroupSpec) -> GroupImage:
    """The wire image of ``group`` as its group mod carries it."""
    msg = group_mod(None, group)
    buckets = []
    for bucket in msg.buckets:
        buf = bytearray()
        bucket.serialize(buf, 0)
        buckets.append(bytes(buf[: bucket.len]))
    props = b"".join(bytes(p.serialize()) for p in msg.properties)
    return GroupImage(group.group_id, msg.type, tuple(buckets), props)


# ---------------------------------------------------------------------------------------------
# Requests, bundles, packet-out


def flow_desc_request(
    dp, table_id: int = ofp.OFPTT_ALL, cookie: int = 0, cookie_mask: int = 0
) -> parser.OFPFlowDescStatsRequest:
    """A request for every flow of the switch (or of one table, or of a cookie range)."""
    return parser.OFPFlowDescStatsRequest(
        dp, 0, table_id, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, cookie_mask, parser.OFPMatch()
    )


def group_desc_request(dp) -> parser.OFPGroupDescStatsRequest:
    """A request for the description of every group."""
    return parser.OFPGroupDescStatsRequest(dp, 0, ofp.OFPG_ALL)


def bundle(dp, bundle_id: int, msgs: Sequence) -> list:
    """The messages that apply ``msgs`` atomically and in order: open, add each, commit."""
    flags = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
    out = [parser.OFPBundleCtrlMsg(dp, bundle_id, ofp.OFPBCT_OPEN_REQUEST, flags, [])]
    out += [parser.OFPBundleAddMsg(dp, bundle_id, flags, m, []) for m in msgs]
    out.append(parser.OFPBundleCtrlMsg(dp, bundle_id, ofp.OFPBCT_COMMIT_REQUEST, flags, []))
    return out


def packet_out(
    dp, data: bytes, out_port: int, in_port: int = ofp.OFPP_CONTROLLER
) -> parser.OFPPacketOut:
    """A packet-out sending ``data`` through ``out_port`` (OFPP_TABLE runs the pipeline)."""
    return parser.OFPPacketOut(
        dp,
        buffer_id=ofp.OFP_NO_BUFFER,
        match=parser.OFPMatch(in_port=in_port),
        actions=[parser.OFPActionOutput(out_port, 0)],
        data=data,
    )
