"""Port mappings: a container port on the node's underlay IP, through br-phy and br-int."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sdn import pipeline as pl
from sdn.faketable import FakeSwitch, Packet
from sdn.logic import LocalPort, NodeContext, Pipeline
from sdn.logic_portmap import PortMapping, Uplink
from sdn.logic_text import flow_text

pytestmark = pytest.mark.unit

GW = "02:00:00:00:00:01"
NODE_MAC = "02:00:00:00:0f:01"  # br-phy's internal port, which owns the node IP
CLIENT_MAC = "02:00:00:00:0e:07"
CLIENT = "192.0.2.7"  # another host on the underlay
UPLINK = Uplink(int_ofport=2, phy_ofport=2, nic_ofport=1)
CTX = NodeContext("192.0.2.1", "10.18.0.0/26", None, GW)


def node(*mappings: PortMapping):
    """br-int and br-phy of one node with container 10.18.0.2 on ofport 11."""
    pipeline = Pipeline(CTX)
    port = LocalPort(
        "c1", 11, "02:00:00:00:00:0b", "10.18.0.2", None, "app.ns.web.ns", 0,
        "10.30.0.10", None, port_mappings=mappings,
    )  # fmt: skip
    br_int, br_phy = FakeSwitch("br-int"), FakeSwitch("br-phy")
    br_int.load(pipeline.node_flows() + pipeline.port_flows(port) + pipeline.uplink_flows(UPLINK))
    br_phy.load(pipeline.phy_flows(UPLINK, [port]))
    return pipeline, port, br_int, br_phy


def from_client(dport: int, proto: str = "tcp", sport: int = 50000) -> Packet:
    """A packet from the underlay client to the node IP, as it reaches br-phy's uplink."""
    return Packet.ip(
        UPLINK.nic_ofport, CLIENT, CTX.node_ip, proto=proto, sport=sport, dport=dport,
        eth_src=CLIENT_MAC, eth_dst=NODE_MAC,
    )  # fmt: skip


def through(br_phy: FakeSwitch, br_int: FakeSwitch, pkt: Packet):
    """br-phy, then across the patch port into br-int: br-int's single output."""
    steered = br_phy.send(pkt).only()
    assert steered.port == UPLINK.phy_ofport
    arriving = steered.packet.to_wire()
    arriving.in_port = UPLINK.int_ofport
    return br_int.send(arriving).only()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_mapped_port_reaches_the_container_and_replies_leave_by_the_uplink(proto):
    _, port, br_int, br_phy = node(PortMapping(8080, 80, proto))
    out = through(br_phy, br_int, from_client(8080, proto))
    assert out.port == port.ofport
    assert (out.packet.ip_dst, out.packet.tp_dst) == ("10.18.0.2", 80)
    assert out.packet.ip_src == CLIENT  # the container sees its real client

    reply = br_int.send(out.packet.reply(port.ofport)).only()
    assert reply.port == UPLINK.int_ofport
    assert (reply.packet.ip_src, reply.packet.tp_src) == (CTX.node_ip, 8080)
    assert (reply.packet.eth_src, reply.packet.eth_dst) == (NODE_MAC, CLIENT_MAC)
    reply.packet.in_port = UPLINK.phy_ofport
    leaving = br_phy.send(reply.packet).only()
    assert leaving.port == UPLINK.nic_ofport


def test_unmapped_ports_keep_normal_switching():
    _, _, _, br_phy = node(PortMapping(8080, 80))
    for pkt in (from_client(22), from_client(4789, "udp"), from_client(8080, "udp")):
        assert br_phy.send(pkt).only().port == pl.PORT_NORMAL


def test_unmapped_port_arriving_on_br_int_is_dropped():
    _, _, br_int, _ = node(PortMapping(8080, 80))
    stray = from_client(9999)
    stray.in_port = UPLINK.int_ofport
    assert br_int.send(stray).dropped


def test_underlay_arp_and_nd_are_not_answered_from_br_int():
    _, _, br_int, br_phy = node(PortMapping(8080, 80))
    for pkt in (
        Packet.arp_request(UPLINK.nic_ofport, CLIENT_MAC, CLIENT, CTX.node_ip),
        Packet.neighbor_solicitation(UPLINK.nic_ofport, CLIENT_MAC, "fe80::7", "2001:db8::1"),
    ):
        assert br_phy.send(pkt).only().port == pl.PORT_NORMAL  # the node's kernel answers
        pkt.in_port = UPLINK.int_ofport  # NORMAL floods it into the patch port too
        assert br_int.send(pkt).dropped


def test_port_mapping_text_is_parsed_like_the_node_api():
    assert PortMapping.parse_list("8080:80;53/udp; 9000:90/tcp") == (
        PortMapping(8080, 80, "tcp"),
        PortMapping(53, 53, "udp"),
        PortMapping(9000, 90, "tcp"),
    )
    assert PortMapping.parse_list("") == ()
    for bad in ("80:70000", "x:80", "80/sctp", "4789/udp", "80;80"):
        with pytest.raises(ValueError, match="portMappings"):
            PortMapping.parse_list(bad)


@pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="needs ovs-ofctl")
def test_port_mapping_flows_parse_in_ovs_ofctl(tmp_path):
    pipeline, port, _, _ = node(PortMapping(8080, 80), PortMapping(5353, 53, "udp"))
    flows = pipeline.port_flows(port) + pipeline.uplink_flows(UPLINK)
    flows += pipeline.phy_flows(UPLINK, [port])
    path = tmp_path / "flows.txt"
    path.write_text("".join(flow_text(f) + "\n" for f in flows))
    run = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow15", "parse-flows", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "normalization changed" not in run.stderr
