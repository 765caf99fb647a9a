"""The direct wire encoder gives the same bytes as the os-ken based one, message by message."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_5 as ofp

from oaknet.model import CLOSEST, ROUND_ROBIN, Instance, Service, ServiceIP
from sdn import ofmsg, ofwire, spec
from sdn.agent import with_last_resort
from sdn.logic import LocalPort, NodeContext, Peer, Pipeline
from sdn.logic_portmap import PortMapping, Uplink
from sdn.logic_tunnel import any_peer_flows
from sdn.switch import OFPGC_ADD_OR_MOD

pytestmark = pytest.mark.unit

DP = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)
NEW = (spec.CT_NEW | spec.CT_TRK, spec.CT_NEW | spec.CT_TRK)


def osken_bytes(msg, xid: int) -> bytes:
    """What os-ken puts on the wire for ``msg`` with ``xid``."""
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def node_state() -> tuple[list[spec.Flow], list[spec.GroupSpec]]:
    """Every kind of flow and group a node computes: static, ports, peers, services."""
    ctx = NodeContext("192.0.2.1", "10.18.0.0/26", "fc00::/120", "0a:00:00:00:00:01")
    p = Pipeline(ctx)
    port = LocalPort(
        "okc1",
        3,
        "02:00:00:00:00:03",
        "10.18.0.2",
        "fc00::2",
        "app.ns.web.ns",
        0,
        "10.30.0.10",
        "fdff::10",
        (PortMapping(8080, 80), PortMapping(5353, 53, "udp")),
    )
    peers = {"192.0.2.2": Peer("192.0.2.2", 1), "192.0.2.3": Peer("192.0.2.3", 2)}
    costs = {"192.0.2.2": 1.5, "192.0.2.3": 0.7}
    uplink = Uplink(4, 2, 1)
    flows = p.node_flows() + p.punt_flows() + p.port_flows(port) + p.uplink_flows(uplink)
    flows += p.phy_flows(uplink, [port]) + any_peer_flows(9)
    for peer in peers.values():
        flows += p.peer_flows(peer)
    web = Service(
        "app.ns.web.ns",
        service_ips=[
            ServiceIP(ROUND_ROBIN, "10.30.0.1", "fdff:2000::1"),
            ServiceIP(CLOSEST, "10.30.0.2", "fdff:1000::2"),
        ],
        instances=[
            Instance(0, "10.30.0.10", "fdff::10", node_ip="192.0.2.1"),
            Instance(1, "10.30.0.11", "fdff::11", node_ip="192.0.2.2"),
            Instance(2, "10.30.0.12", None, node_ip="192.0.2.3"),
            Instance(3, "10.30.0.13", "fdff::13", node_ip="192.0.2.9"),
        ],
    )
    empty = Service("app.ns.idle.ns", service_ips=[ServiceIP(ROUND_ROBIN, "10.30.0.5")])
    groups = []
    for svc in (web, empty):
        f, g = p.service_flows(svc, {port.port_name: port}, peers, costs)
        flows += f
        groups += g
    groups += [with_last_resort(g, 9) for g in groups]
    groups.append(
        spec.GroupSpec(
            77,
            "select",
            (spec.Bucket((spec.Output(3),), weight=5), spec.Bucket((spec.Output(4),))),
            selection_method="hash",
            fields=("ipv4_src", "ipv4_dst", "ip_proto", "tcp_src", "tcp_dst"),
        )
    )
    groups.append(spec.GroupSpec(78, "all", (spec.Bucket((spec.Output(3), spec.DecTtl())),)))
    return flows, groups


def extra_flows() -> list[spec.Flow]:
    """Actions and matches the pipeline rarely or never uses, but the encoders accept."""
    f = spec.Flow.make
    return [
        f(1, 200, {"ct_state": NEW, "ipv4_dst": "10.30.0.1", "tcp_dst": 80}, [spec.Group(7)]),
        f(
            3,
            10,
            {"in_port": 5, "reg0": (1, 1)},
            [spec.SetField("tun_id", 0x10), spec.CtClear(), spec.Controller(), spec.GotoTable(4)],
        ),
        f(4, 11, {"eth_type": 0x86DD}, [spec.Ct(3, True, nat=spec.Nat("dst", "fd00::11", 80))]),
        f(4, 12, {"eth_type": 0x0800}, [spec.Ct(3, True, 5, spec.Nat("src", "10.0.0.1", 99))]),
        f(2, 100, {"ipv4_dst": "10.18.0.2"}, [spec.DecTtl(), spec.Output(spec.IN_PORT)]),
        f(0, 1, {"tcp_src": 1, "eth_type": 0x86DD, "ipv6_dst": ("fd00::", "ffff::")}, []),
        f(5, 0, {}, []),
    ]


def test_flow_mods_are_byte_identical():
    flows, _ = node_state()
    flows += extra_flows()
    assert len(flows) > 60
    for xid, fl in enumerate(flows, 1):
        assert ofwire.flow_add(fl, xid) == osken_bytes(ofmsg.flow_add(DP, fl), xid), fl
    for cookie, table in ((0x1234_5678_9ABC_DEF0, 3), (1, ofp.OFPTT_ALL)):
        want = osken_bytes(ofmsg.flow_delete_cookie(DP, cookie, table), 9)
        assert ofwire.flow_delete_cookie(cookie, table, 9) == want


def test_group_mods_and_images_are_byte_identical():
    _, groups = node_state()
    kinds = {g.type for g in groups}
    assert kinds == {"select", "fast_failover", "all"}
    for xid, g in enumerate(groups, 1):
        for command in (ofp.OFPGC_ADD, OFPGC_ADD_OR_MOD):
            assert ofwire.group_mod(g, command, xid) == osken_bytes(
                ofmsg.group_mod(DP, g, command), xid
            ), g
        assert ofwire.group_image(g) == ofmsg.group_image(g)
    assert ofwire.group_delete(5, 3) == osken_bytes(ofmsg.group_delete(DP, 5), 3)


def test_bundle_parts_match_and_carry_consecutive_xids():
    flows, groups = node_state()
    inner = [ofwire.group_mod(groups[0]), ofwire.flow_add(flows[0]), ofwire.group_delete(9)]
    parts, commit_xid = ofwire.bundle(7, inner, 0xFFFFFFFF)
    xids = [struct.unpack_from("!I", p, 4)[0] for p in parts]
    assert xids == [0xFFFFFFFF, 0, 1, 2, 3] and commit_xid == 3

    msgs = [ofmsg.group_mod(DP, groups[0]), ofmsg.flow_add(DP, flows[0])]
    msgs.append(ofmsg.group_delete(DP, 9))
    want = ofmsg.bundle(DP, 7, msgs)
    assert [osken_bytes(m, x) for m, x in zip(want, xids)] == parts


def test_bad_records_are_refused_like_the_osken_encoder():
    bad_zone = spec.Flow.make(1, 1, {}, [spec.Ct(zone=70000)])
    bad_goto = spec.GroupSpec(1, "select", (spec.Bucket((spec.GotoTable(2),)),))
    bad_type = spec.GroupSpec(1, "weird", ())
    for call in (
        lambda: ofwire.flow_add(bad_zone),
        lambda: ofwire.group_mod(bad_goto),
        lambda: ofwire.group_mod(bad_type),
        lambda: ofwire.flow_add(spec.Flow.make(1, 1, {"tcp_dst": 80}, [])),
        lambda: ofwire.flow_add(spec.Flow.make(1, 1, {}, [spec.Ct(1, nat=spec.Nat("up"))])),
    ):
        with pytest.raises(ofmsg.SpecError):
            call()


def _service_flow(ip: str, actions: tuple) -> spec.Flow:
    match = {"ct_state": NEW, "reg0": 1, "eth_type": 0x0800, "ipv4_dst": ip}
    return spec.Flow.make(3, 200, match, actions, "service:app.ns.web.ns")


def test_cookies_are_those_a_switch_was_programmed_with():
    # Cookies of flows dumped from a switch (docs/pipeline.md): the content digest must not
    # change with how the records print themselves.
    snat = spec.SetField("reg1", 1)
    mark = (spec.SetField("ct_mark", 1),)
    assert _service_flow("10.30.0.1", (snat, spec.Group(169738241))).cookie == 0x70AB87F678322570
    dnat = spec.Ct(1, True, 4, spec.Nat("dst", "10.18.0.3"), mark)
    assert _service_flow("10.30.0.10", (snat, dnat)).cookie == 0x70AB87F6B4FA504E
    commit = spec.Ct(1, True, 4, None, mark)
    assert _service_flow("10.30.0.11", (snat, commit)).cookie == 0x70AB87F6091B477F


def test_action_reprs_are_the_dataclass_reprs():
    samples = [
        spec.Output(3),
        spec.SetField("eth_dst", "02:00:00:00:00:01"),
        spec.Move("reg6", "ct_mark", 16, 0, 16),
        spec.Nat("src", "fdff::1", 80),
        spec.Ct(2, True, None, spec.Nat(), (spec.SetField("ct_mark", 1),)),
        spec.CtClear(),
        spec.Group(7),
        spec.Resubmit(6),
        spec.GotoTable(4),
        spec.Controller(),
        spec.DecTtl(),
    ]
    for act in samples:
        cls = type(act)
        twin = dataclasses.make_dataclass(
            cls.__name__, [(f.name, f.type) for f in dataclasses.fields(cls)], frozen=True
        )
        values = {f.name: getattr(act, f.name) for f in dataclasses.fields(cls)}
        assert repr(act) == repr(twin(**values))
