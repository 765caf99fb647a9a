"""Spec flows and groups in ``ovs-ofctl`` syntax, for docs, logs and syntax checks against OVS."""

from __future__ import annotations

from sdn import pipeline as pl
from sdn import spec

# OXM names of the records -> the names ovs-ofctl prints.
OVS_NAMES = {
    "ipv4_src": "nw_src",
    "ipv4_dst": "nw_dst",
    "ip_proto": "nw_proto",
    "icmpv4_type": "icmp_type",
    "icmpv4_code": "icmp_code",
    "ipv6_nd_target": "nd_target",
    "ipv6_nd_sll": "nd_sll",
    "ipv6_nd_tll": "nd_tll",
    "tunnel_id": "tun_id",
    "tun_ipv4_src": "tun_src",
    "tun_ipv4_dst": "tun_dst",
}
_CT_FLAGS = ("new", "est", "rel", "rpl", "inv", "trk")
_SPECIAL_PORTS = {
    spec.IN_PORT: "IN_PORT",
    spec.TABLE: "TABLE",
    spec.CONTROLLER: "CONTROLLER",
    spec.LOCAL: "LOCAL",
    pl.PORT_NORMAL: "NORMAL",
}
# Matches whose ovs-ofctl shorthand reads better than eth_type/ip_proto pairs.
_SHORTHANDS = {
    (0x0800, None): "ip",
    (0x0800, 6): "tcp",
    (0x0800, 17): "udp",
    (0x0800, 1): "icmp",
    (0x86DD, None): "ipv6",
    (0x86DD, 6): "tcp6",
    (0x86DD, 17): "udp6",
    (0x86DD, 58): "icmp6",
    (0x0806, None): "arp",
}


def ovs_name(name: str) -> str:
    """The ovs-ofctl name of an OXM field name."""
    return OVS_NAMES.get(name, name)


# Fields whose values read best in hex (bit fields); others print in decimal.
_HEX_FIELDS = ("reg", "xreg", "ct_mark", "ct_label", "tunnel_id", "metadata", "nd_reserved")


def _value(value, name: str = "") -> str:
    if isinstance(value, tuple):
        return f"{_value(value[0], name)}/{_value(value[1], name)}"
    if isinstance(value, int):
        return hex(value) if name.startswith(_HEX_FIELDS) else str(value)
    return str(value)


def _ct_state(value) -> str:
    bits, mask = value if isinstance(value, tuple) else (value, value)
    return "".join(
        ("+" if bits & (1 << i) else "-") + name
        for i, name in enumerate(_CT_FLAGS)
        if mask & (1 << i)
    )


def match_text(match: dict) -> str:
    """A record's match in ovs-ofctl syntax (shorthands like ``tcp`` where they apply)."""
    fields = dict(match)
    parts = []
    key = (fields.get("eth_type"), fields.get("ip_proto"))
    short = _SHORTHANDS.get(key)
    if short is not None:
        fields.pop("eth_type")
        fields.pop("ip_proto", None)
    else:
        short = _SHORTHANDS.get((key[0], None))
        if short is not None:
            fields.pop("eth_type")
    if short is not None:
        parts.append(short)
    for name, value in fields.items():
        if name == "ct_state":
            parts.append(f"ct_state={_ct_state(value)}")
        else:
            parts.append(f"{ovs_name(name)}={_value(value, name)}")
    return ",".join(parts)


def _nat_text(nat: spec.Nat) -> str:
    if nat.kind is None:
        return "nat"
    if nat.addr is None:
        return f"nat({nat.kind})"
    addr = nat.addr
    if nat.port is not None:
        addr = f"[{addr}]:{nat.port}" if ":" in addr else f"{addr}:{nat.port}"
    return f"nat({nat.kind}={addr})"


def _bits(name: str, ofs: int, n_bits: int) -> str:
    return f"{ovs_name(name)}[{ofs}..{ofs + n_bits - 1}]"


def action_text(act) -> str:
    """One spec action in ovs-ofctl syntax."""
    if isinstance(act, spec.Output):
        special = _SPECIAL_PORTS.get(act.port)
        return special if special == "IN_PORT" else f"output:{special or act.port}"
    if isinstance(act, spec.SetField):
        return f"set_field:{_value(act.value, act.field)}->{ovs_name(act.field)}"
    if isinstance(act, spec.Move):
        return (
            f"move:{_bits(act.src, act.src_ofs, act.n_bits)}->"
            f"{_bits(act.dst, act.dst_ofs, act.n_bits)}"
        )
    if isinstance(act, spec.Ct):
        parts = ["commit"] if act.commit else []
        if act.table is not None:
            parts.append(f"table={act.table}")
        parts.append(f"zone={act.zone}")
        if act.nat is not None:
            parts.append(_nat_text(act.nat))
        if act.exec_:
            parts.append(f"exec({','.join(action_text(a) for a in act.exec_)})")
        return f"ct({','.join(parts)})"
    if isinstance(act, spec.CtClear):
        return "ct_clear"
    if isinstance(act, spec.Group):
        return f"group:{act.group_id}"
    if isinstance(act, spec.Resubmit):
        return f"resubmit(,{act.table})"
    if isinstance(act, spec.GotoTable):
        return f"goto_table:{act.table}"
    if isinstance(act, spec.Controller):
        return f"controller(max_len={act.max_len})"
    if isinstance(act, spec.DecTtl):
        return "dec_ttl"
    raise TypeError(f"no ovs-ofctl text for {act!r}")


def actions_text(actions) -> str:
    """An action list in ovs-ofctl syntax (``drop`` when empty)."""
    return ",".join(action_text(a) for a in actions) or "drop"


def flow_text(flow: spec.Flow, cookie: bool = True) -> str:
    """A flow as an ``ovs-ofctl add-flow`` line (the way ``dump-flows`` shows it)."""
    head = f"cookie={flow.cookie:#x}," if cookie else ""
    match = match_text(flow.match_dict())
    match = f"{match}," if match else ""
    return (
        f"{head}table={flow.table},priority={flow.priority},{match}"
        f"actions={actions_text(flow.actions)}"
    )


def group_text(group: spec.GroupSpec) -> str:
    """A group as an ``ovs-ofctl -O OpenFlow15 add-group`` line."""
    parts = [f"group_id={group.group_id}", f"type={group.type}"]
    if group.selection_method is not None:
        method = group.selection_method
        if group.fields:
            method += f",fields({','.join(ovs_name(f) for f in group.fields)})"
        parts.append(f"selection_method={method}")
    for index, bucket in enumerate(group.buckets):
        bucket_id = index if bucket.bucket_id is None else bucket.bucket_id
        bparts = [f"bucket=bucket_id={bucket_id}"]
        if group.type == "select":
            bparts.append(f"weight={bucket.weight}")
        if bucket.watch_port is not None:
            bparts.append(f"watch_port={bucket.watch_port}")
        bparts.append(f"actions={actions_text(bucket.actions)}")
        parts.append(",".join(bparts))
    return ",".join(parts)
