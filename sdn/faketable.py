"""A fake OpenFlow switch that walks packet descriptions through spec flows and groups.

For unit tests of the pipeline logic without a switch: tables, goto/resubmit, groups (select by a
5-tuple hash, fast failover by port liveness), and a small conntrack (zones, commit, DNAT/SNAT,
reply direction, related ICMP errors, ct_mark). Installing flows checks what OVS would reject:
missing match prerequisites, a set_field/move the match does not allow, ct(nat) without an IP
match, a group that does not exist, two flows with the same table, priority and match.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sdn import pipeline as pl
from sdn import spec
from sdn.faketable_ct import Conntrack
from sdn.faketable_packet import Packet, matches, move, set_field

__all__ = ["Chooser", "Emitted", "FakeSwitch", "FakeSwitchError", "Packet", "Result"]

_IP4, _IP6, _ARP = pl.ETH_IP, pl.ETH_IPV6, pl.ETH_ARP
_ANY_IP = (_IP4, _IP6)
# field -> prerequisites: each names a match field and the values it may have.
_PREREQS: dict[str, dict[str, tuple]] = {
    "ip_proto": {"eth_type": _ANY_IP},
    **{f: {"eth_type": (_IP4,)} for f in ("ipv4_src", "ipv4_dst")},
    **{f: {"eth_type": (_IP6,)} for f in ("ipv6_src", "ipv6_dst")},
    **{f: {"eth_type": (_ARP,)} for f in ("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha")},
    **{f: {"eth_type": _ANY_IP, "ip_proto": (6,)} for f in ("tcp_src", "tcp_dst")},
    **{f: {"eth_type": _ANY_IP, "ip_proto": (17,)} for f in ("udp_src", "udp_dst")},
    **{f: {"eth_type": (_IP4,), "ip_proto": (1,)} for f in ("icmpv4_type", "icmpv4_code")},
    **{f: {"eth_type": (_IP6,), "ip_proto": (58,)} for f in ("icmpv6_type", "icmpv6_code")},
    **{
        f: {"eth_type": (_IP6,), "ip_proto": (58,), "icmpv6_type": (135, 136)}
        for f in ("ipv6_nd_target", "nd_reserved", "nd_options_type")
    },
    "ipv6_nd_sll": {"eth_type": (_IP6,), "ip_proto": (58,), "icmpv6_type": (135,)},
    "ipv6_nd_tll": {"eth_type": (_IP6,), "ip_proto": (58,), "icmpv6_type": (136,)},
}


class FakeSwitchError(Exception):
    """Something the real switch would reject, or a packet walk that cannot end."""


@dataclass
class Emitted:
    """A packet leaving the switch on ``port`` (or punted to the controller by ``cookie``)."""

    port: int
    packet: Packet
    cookie: int = 0
    table: int = 0


@dataclass
class Result:
    """What became of one packet: outputs, punts to the controller, the flows it hit."""

    outputs: list[Emitted] = field(default_factory=list)
    punts: list[Emitted] = field(default_factory=list)
    trace: list[spec.Flow] = field(default_factory=list)
    dropped_to_in_port: int = 0

    @property
    def dropped(self) -> bool:
        """True when the packet neither left the switch nor reached the controller."""
        return not self.outputs and not self.punts

    def only(self) -> Emitted:
        """The single output, or an assertion error naming what happened instead."""
        assert len(self.outputs) == 1 and not self.punts, (
            f"expected one output, got {self.outputs} punts {self.punts}; trace:\n"
            + "\n".join(f"  t{f.table} p{f.priority} {dict(f.match)}" for f in self.trace)
        )
        return self.outputs[0]


Chooser = Callable[[spec.GroupSpec, list, Packet], int]


class FakeSwitch:
    """Flows and groups of one bridge, a conntrack, and the ports that are down."""

    def __init__(self, name: str = "node"):
        self.name = name
        self.flows: dict[tuple, spec.Flow] = {}
        self.groups: dict[int, spec.GroupSpec] = {}
        self.dead_ports: set[int] = set()
        self.conntrack = Conntrack()
        self._tables: dict[int, list[spec.Flow]] = {}

    def load(self, flows: Iterable[spec.Flow], groups: Iterable[spec.GroupSpec] = ()) -> None:
        """Replace the switch's flows and groups, checking them the way OVS would."""
        self.groups = {}
        for group in groups:
            if group.group_id in self.groups:
                raise FakeSwitchError(f"group {group.group_id} given twice")
            for bucket in group.buckets:
                _check_actions(bucket.actions, {}, in_group=True)
            self.groups[group.group_id] = group
        self.flows = {}
        for flow in flows:
            other = self.flows.get(flow.key)
            if other is not None and other != flow:
                raise FakeSwitchError(
                    f"two flows share table/priority/match {flow.key}: "
                    f"{other.owner} and {flow.owner}"
                )
            _check_match(flow)
            _check_actions(flow.actions, flow.match_dict())
            for act in flow.actions:
                if isinstance(act, spec.Group) and act.group_id not in self.groups:
                    raise FakeSwitchError(f"flow {flow.key} uses missing group {act.group_id}")
            self.flows[flow.key] = flow
        self._tables = {}
        for flow in sorted(self.flows.values(), key=lambda f: -f.priority):
            self._tables.setdefault(flow.table, []).append(flow)

    def send(self, pkt: Packet, choose: Chooser | None = None) -> Result:
        """Run a copy of ``pkt`` through the pipeline from table 0."""
        result = Result()
        self._table(copy.deepcopy(pkt), 0, result, choose, 0)
        return result

    def _table(self, pkt: Packet, table: int, result: Result, choose, depth: int) -> None:
        if depth > 32:
            raise FakeSwitchError("packet walk does not end (more than 32 table visits)")
        hits = [f for f in self._tables.get(table, ()) if matches(pkt, f.match)]
        if not hits:
            return
        if len(hits) > 1 and hits[1].priority == hits[0].priority:
            raise FakeSwitchError(f"ambiguous match in table {table}: {hits[0]} / {hits[1]}")
        result.trace.append(hits[0])
        self._actions(pkt, hits[0].actions, hits[0], result, choose, depth)

    def _actions(self, pkt, actions, flow, result, choose, depth) -> None:
        for act in actions:
            if isinstance(act, spec.Output):
                self._output(pkt, act.port, flow, result)
            elif isinstance(act, spec.Controller):
                result.punts.append(
                    Emitted(spec.CONTROLLER, pkt.to_wire(), flow.cookie, flow.table)
                )
            elif isinstance(act, spec.SetField):
                set_field(pkt, act.field, act.value)
            elif isinstance(act, spec.Move):
                move(pkt, act)
            elif isinstance(act, spec.Ct):
                self.conntrack.execute(pkt, act)
                if act.table is not None:
                    self._table(pkt, act.table, result, choose, depth + 1)
            elif isinstance(act, spec.CtClear):
                pkt.ct_state = pkt.ct_zone = pkt.ct_mark = pkt.ct_label = 0
            elif isinstance(act, spec.Group):
                self._group(pkt, self.groups[act.group_id], flow, result, choose, depth)
            elif isinstance(act, (spec.Resubmit, spec.GotoTable)):
                self._table(pkt, act.table, result, choose, depth + 1)
            elif not isinstance(act, spec.DecTtl):
                raise FakeSwitchError(f"unknown action {act!r}")

    def _output(self, pkt: Packet, port: int, flow: spec.Flow, result: Result) -> None:
        if port == spec.IN_PORT:
            port = pkt.in_port
        elif port == pkt.in_port:
            # OpenFlow drops an output to the input port ("skipping output to input port").
            result.dropped_to_in_port += 1
            return
        result.outputs.append(Emitted(port, pkt.to_wire(), flow.cookie, flow.table))

    def _group(self, pkt, group: spec.GroupSpec, flow, result, choose, depth) -> None:
        if group.type == "all":
            for bucket in group.buckets:
                self._actions(copy.deepcopy(pkt), bucket.actions, flow, result, choose, depth)
            return
        if group.type == "fast_failover":
            live = [b for b in group.buckets if b.watch_port not in self.dead_ports]
            buckets = live[:1]
        elif group.type == "select":
            buckets = [b for b in group.buckets if b.weight > 0]
            if buckets:
                index = (choose or _dp_hash)(group, buckets, pkt)
                buckets = [buckets[index]]
        else:
            buckets = list(group.buckets[:1])
        for bucket in buckets:
            self._actions(pkt, bucket.actions, flow, result, choose, depth)


def _dp_hash(group: spec.GroupSpec, buckets: list, pkt: Packet) -> int:
    # OVS's default method hashes L4 symmetrically but, on the userspace datapath, without
    # UDP ports (measured); dp_hash and hash include them.
    ports = (pkt.tp_src, pkt.tp_dst)
    if group.selection_method is None and pkt.ip_proto == pl.PROTO_UDP:
        ports = (None, None)
    key = repr((pkt.ip_src, pkt.ip_dst, pkt.ip_proto, ports, pkt.icmp_id)).encode()
    weights = [i for i, b in enumerate(buckets) for _ in range(b.weight)]
    return weights[zlib.crc32(key) % len(weights)]


def _check_prereqs(name: str, match: dict, what: str) -> None:
    for need, allowed in _PREREQS.get(name, {}).items():
        if match.get(need) not in allowed:
            raise FakeSwitchError(f"{what} {name} lacks its prerequisite {need} in {allowed}")


def _check_match(flow: spec.Flow) -> None:
    match = flow.match_dict()
    for name in match:
        _check_prereqs(name, match, f"flow {flow.key}: match field")


def _check_actions(actions, match: dict, in_group: bool = False) -> None:
    for i, act in enumerate(actions):
        last = i == len(actions) - 1
        if isinstance(act, spec.GotoTable) and (in_group or not last):
            raise FakeSwitchError("goto_table must be a flow's last action")
        if isinstance(act, spec.Ct) and act.table is not None and not last:
            raise FakeSwitchError("ct(table=...) forks the packet: make it the last action")
        if in_group:
            continue
        if isinstance(act, spec.SetField):
            _check_prereqs(act.field, match, "set_field")
        elif isinstance(act, spec.Move):
            _check_prereqs(act.src, match, "move from")
            _check_prereqs(act.dst, match, "move to")
        elif (
            isinstance(act, spec.Ct)
            and act.nat is not None
            and match.get("eth_type") not in _ANY_IP
        ):
            raise FakeSwitchError("ct(nat) needs an ip or ipv6 match")
