"""Node-level pipeline: responders, admission, local routing, owners, group ids, OVS syntax."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import zlib

import pytest

from oaknet.model import CLOSEST, ROUND_ROBIN, Instance, Service, ServiceIP
from sdn import pipeline as pl
from sdn.faketable import FakeSwitch, FakeSwitchError, Packet
from sdn.logic import LocalPort, NodeContext, Peer, Pipeline, peer_owner, port_owner
from sdn.logic_service import GroupIds
from sdn.logic_sim import GATEWAY_MAC, example_network
from sdn.logic_text import flow_text, group_text
from sdn.spec import IN_PORT, NODE_OWNER, Flow, Output, SetField, punt_owner, service_owner

pytestmark = pytest.mark.unit

C1 = {"mac": "02:00:00:00:00:0b", "v4": "10.18.0.2", "v6": "fc00::2"}
C2 = {"mac": "02:00:00:00:00:0c", "v4": "10.18.0.3", "v6": "fc00::3"}


def one_node():
    """Node n1 with two local containers on ofports 11 and 12."""
    net = example_network(1)
    node = net.nodes["n1"]
    node.ports["a"] = LocalPort(
        "a", 11, C1["mac"], C1["v4"], C1["v6"], "app.ns.a.ns", 0, "10.30.0.10", "fdff::10"
    )
    node.ports["b"] = LocalPort(
        "b", 12, C2["mac"], C2["v4"], C2["v6"], "app.ns.b.ns", 0, None, None
    )
    node.load([])
    return node


def test_arp_responder_answers_every_request_with_the_gateway_mac():
    sw = one_node().switch
    for target in ("10.18.0.1", "10.18.0.3"):  # the gateway, and a neighbour
        out = sw.send(Packet.arp_request(11, C1["mac"], C1["v4"], target)).only()
        reply = out.packet
        assert out.port == 11
        assert (reply.arp_op, reply.arp_sha, reply.arp_spa) == (2, GATEWAY_MAC, target)
        assert (reply.arp_tha, reply.arp_tpa) == (C1["mac"], C1["v4"])
        assert (reply.eth_src, reply.eth_dst) == (GATEWAY_MAC, C1["mac"])


def test_arp_probe_is_not_answered():
    sw = one_node().switch
    assert sw.send(Packet.arp_request(11, C1["mac"], "0.0.0.0", C1["v4"])).dropped


def test_nd_responder_answers_solicitations_with_the_gateway_mac():
    sw = one_node().switch
    ns = Packet.neighbor_solicitation(11, C1["mac"], "fe80::b", "fc00::1")
    out = sw.send(ns).only()
    na = out.packet
    assert out.port == 11
    assert (na.icmp_type, na.nd_target, na.nd_tll) == (136, "fc00::1", GATEWAY_MAC)
    assert (na.ip_src, na.ip_dst) == ("fc00::1", "fe80::b")
    assert (na.eth_src, na.eth_dst) == (GATEWAY_MAC, C1["mac"])
    assert na.nd_reserved == 0x60000000 and na.nd_options_type == 2


def test_duplicate_address_detection_is_not_answered():
    sw = one_node().switch
    dad = Packet.neighbor_solicitation(11, C1["mac"], "::", C1["v6"])
    assert sw.send(dad).dropped


@pytest.mark.parametrize("v", [4, 6])
def test_local_containers_reach_each_other_by_namespace_ip(v):
    sw = one_node().switch
    key = "v4" if v == 4 else "v6"
    out = sw.send(Packet.ip(11, C1[key], C2[key])).only()
    assert out.port == 12
    assert (out.packet.ip_src, out.packet.ip_dst) == (C1[key], C2[key])
    assert (out.packet.eth_src, out.packet.eth_dst) == (GATEWAY_MAC, C2["mac"])
    back = sw.send(out.packet.reply(12)).only()
    assert back.port == 11 and back.packet.ip_src == C2[key]


def test_spoofed_and_unknown_traffic_is_dropped():
    sw = one_node().switch
    assert sw.send(Packet.ip(11, "10.18.0.9", C2["v4"])).dropped  # not the port's address
    assert sw.send(Packet.ip(99, C1["v4"], C2["v4"])).dropped  # unknown port
    assert sw.send(Packet.ip(11, C1["v4"], "198.51.100.1")).dropped  # outside
    assert sw.send(Packet.ip(11, C1["v4"], "10.18.0.1")).dropped  # the gateway itself


def test_translation_without_a_source_instance_ip_is_dropped():
    node = one_node()
    svc = Service(
        "app.ns.c.ns",
        service_ips=[ServiceIP(ROUND_ROBIN, "10.30.0.1")],
        instances=[Instance(0, "10.30.0.20", node_ip="192.0.2.1", namespace_ip=C1["v4"])],
    )
    node.ports["a"] = LocalPort(
        "a", 11, C1["mac"], C1["v4"], None, "app.ns.c.ns", 0, "10.30.0.20", None
    )
    node.load([svc])
    # b has no instance IP: its namespace address must never leave translated
    assert node.switch.send(Packet.ip(12, C2["v4"], "10.30.0.1")).dropped


def test_owners_and_cookies():
    ctx = NodeContext("192.0.2.1", "10.18.0.0/26", "fc00::/120", GATEWAY_MAC)
    p = Pipeline(ctx)
    port = LocalPort(
        "veth-a", 11, C1["mac"], C1["v4"], C1["v6"], "app.ns.a.ns", 0, "10.30.0.10", "fdff::10"
    )
    svc = Service(
        "app.ns.a.ns",
        service_ips=[ServiceIP(ROUND_ROBIN, "10.30.0.1")],
        instances=[Instance(0, "10.30.0.10", node_ip="192.0.2.1", namespace_ip=C1["v4"])],
    )
    flows, groups = p.service_flows(svc, {"veth-a": port}, {}, {})
    assert {f.owner for f in p.node_flows()} == {NODE_OWNER}
    assert {f.owner for f in p.punt_flows()} == {punt_owner("unknown")}
    assert {f.owner for f in p.port_flows(port)} == {port_owner("veth-a")}
    assert {f.owner for f in p.peer_flows(Peer("192.0.2.2", 102))} == {peer_owner("192.0.2.2")}
    assert {f.owner for f in flows} | {g.owner for g in groups} == {service_owner(svc.name)}
    # Recomputing gives identical records and cookies (what the agent diffs against).
    again, _ = Pipeline(ctx).service_flows(svc, {"veth-a": port}, {}, {})
    assert [f.cookie for f in again] == [f.cookie for f in flows]


def _full_state():
    """Every flow and group of a three-node network with services of both policies."""
    net = example_network(3)
    web = Service(
        "app.ns.web.ns",
        service_ips=[
            ServiceIP(ROUND_ROBIN, "10.30.0.1", "fdff:2000::1"),
            ServiceIP(CLOSEST, "10.30.0.2", "fdff:1000::1"),
        ],
        instances=[
            Instance(
                0,
                "10.30.0.10",
                "fdff::10",
                node_ip="192.0.2.1",
                namespace_ip="10.18.0.2",
                namespace_ip_v6="fc00::2",
            ),
            Instance(
                1,
                "10.30.0.11",
                "fdff::11",
                node_ip="192.0.2.2",
                namespace_ip="10.18.0.66",
                namespace_ip_v6="fc00::102",
            ),
        ],
    )
    empty = Service("app.ns.none.ns", service_ips=[ServiceIP(ROUND_ROBIN, "10.30.0.3")])
    net.nodes["n1"].attach(web, 0, 11)
    net.nodes["n1"].costs["192.0.2.2"] = 3.0
    return net.nodes["n1"].desired([web, empty])


def test_no_two_flows_share_table_priority_and_match():
    flows, groups = _full_state()
    keys = [f.key for f in flows]
    assert len(keys) == len(set(keys))
    FakeSwitch().load(flows, groups)  # also checks prerequisites and group references


def test_fake_switch_rejects_what_ovs_rejects():
    bad_tll = Flow.make(
        6,
        100,
        {"eth_type": pl.ETH_IPV6, "ip_proto": 58, "icmpv6_type": 135},
        (SetField("ipv6_nd_tll", GATEWAY_MAC), Output(IN_PORT)),
    )
    with pytest.raises(FakeSwitchError, match="prerequisite"):
        FakeSwitch().load([bad_tll])
    no_eth = Flow.make(1, 100, {"ipv4_dst": "10.30.0.1"}, ())
    with pytest.raises(FakeSwitchError, match="prerequisite"):
        FakeSwitch().load([no_eth])


@pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="needs ovs-ofctl")
def test_every_flow_and_group_parses_in_ovs_ofctl(tmp_path):
    flows, groups = _full_state()
    path = tmp_path / "flows.txt"
    path.write_text("".join(flow_text(f) + "\n" for f in flows))
    run = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow15", "parse-flows", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    # OVS silently drops match fields whose prerequisites are missing; it says so on stderr.
    assert "normalization changed" not in run.stderr
    assert run.stdout.count("OFPT_FLOW_MOD") == len(flows)
    for group in groups:
        run = subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow15", "parse-group", group_text(group)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert run.returncode == 0, run.stderr


def test_group_ids_are_derived_from_the_service_ip():
    ids = GroupIds()
    assert ids.group_id("10.30.0.1", pl.V4) == 0x0A1E0001
    v6 = ids.group_id("fdff:2000::1", pl.V6)
    assert pl.GROUP_V6_BASE <= v6 < pl.GROUP_V6_BASE + pl.GROUP_V6_SPAN
    assert GroupIds().group_id("fdff:2000:0::1", pl.V6) == v6  # same in a new process
    # consecutive addresses of one prefix get consecutive ids
    assert ids.group_id("fdff:2000::2", pl.V6) == v6 + 1


def test_ipv6_group_id_collision_takes_the_next_free_id():
    first = ipaddress.IPv6Address("fdff:2000::1")
    # An address of another prefix whose hashed id is the same as ``first``'s.
    other = ipaddress.IPv6Address("fdff:1000::")
    low = (zlib.crc32(first.packed[:12]) + 1 - zlib.crc32(other.packed[:12])) % pl.GROUP_V6_SPAN
    clash = str(ipaddress.IPv6Address(int(other) + low))
    assert GroupIds().group_id(clash, pl.V6) == GroupIds().group_id(str(first), pl.V6)

    ids = GroupIds()
    taken = ids.group_id(str(first), pl.V6)
    assert ids.group_id(clash, pl.V6) == taken + 1
    assert ids.group_id(clash, pl.V6) == taken + 1  # kept once given
    assert ids.group_id(str(first), pl.V6) == taken


@pytest.mark.parametrize(
    "field_name,value",
    [
        ("gateway_mac", "02:00:00:00:00"),
        ("subnet_v4", "fc00::/120"),
        ("node_ip", "node1"),
        ("service_ranges_v4", ("10.30.0.0/16", "172.16.0.0/12")),  # both halves of IPv4
    ],
)
def test_node_context_names_the_bad_field(field_name, value):
    args = {
        "node_ip": "192.0.2.1",
        "subnet_v4": "10.18.0.0/26",
        "subnet_v6": None,
        "gateway_mac": GATEWAY_MAC,
        field_name: value,
    }
    with pytest.raises(ValueError, match=field_name):
        NodeContext(**args)


def test_node_context_gateways():
    ctx = NodeContext("192.0.2.1", "10.18.0.64/26", "fc00::100/120", GATEWAY_MAC)
    assert (ctx.gateway_v4, ctx.gateway_v6) == ("10.18.0.65", "fc00::101")
