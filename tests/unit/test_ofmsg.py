"""Spec records become OpenFlow 1.5 messages that Open vSwitch decodes as intended."""

import shutil
import struct
import subprocess

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_5 as ofp

from sdn import ofcodec, ofmsg, spec

pytestmark = pytest.mark.unit

DP = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)
NEW = (spec.CT_NEW | spec.CT_TRK, spec.CT_NEW | spec.CT_TRK)
GW = "02:0a:0a:0a:0a:01"


def ovs_decode(tmp_path, msgs) -> list[str]:
    """What `ovs-ofctl ofp-parse` prints for ``msgs``, one string per message."""
    if shutil.which("ovs-ofctl") is None:
        pytest.skip("ovs-ofctl is not installed")
    data = bytearray()
    for xid, msg in enumerate(msgs, 1):
        msg.set_xid(xid)
        msg.serialize()
        data += msg.buf
    path = tmp_path / "msgs.bin"
    path.write_bytes(bytes(data))
    res = subprocess.run(
        ["ovs-ofctl", "ofp-parse", str(path)], capture_output=True, text=True, check=True
    )
    assert "decode error" not in res.stdout, res.stdout
    assert "WARN" not in res.stderr, res.stderr
    blocks = []
    for line in res.stdout.splitlines():
        if line.startswith("OFPT_"):
            blocks.append(line)
        else:
            blocks[-1] += line
    return blocks


def test_every_flow_action_decodes_as_written(tmp_path):
    f = spec.Flow.make
    flows = [
        f(0, 100, {"eth_type": 0x0800}, [spec.Ct(zone=1, table=1, nat=spec.Nat())]),
        f(1, 200, {"ct_state": NEW, "ipv4_dst": "10.30.0.1", "tcp_dst": 80}, [spec.Group(7)]),
        f(
            2,
            100,
            {"ipv4_dst": "10.18.0.2"},
            [
                spec.SetField("eth_src", GW),
                spec.SetField("eth_dst", "02:00:00:00:00:02"),
                spec.DecTtl(),
                spec.Output(3),
            ],
        ),
        f(
            0,
            200,
            {"icmpv6_type": 135, "icmpv6_code": 0},
            [
                spec.Move("eth_src", "eth_dst", 48),
                spec.Move("ipv6_src", "ipv6_dst", 128),
                spec.Move("ipv6_nd_target", "ipv6_src", 128),
                spec.SetField("icmpv6_type", 136),
                spec.Resubmit(3),
            ],
        ),
        f(
            3,
            10,
            {"in_port": 5, "reg0": (1, 1)},
            [spec.SetField("tun_id", 0x10), spec.CtClear(), spec.Controller(), spec.GotoTable(4)],
        ),
        f(
            4,
            10,
            {"eth_type": 0x86DD},
            [
                spec.Ct(
                    zone=2,
                    commit=True,
                    table=5,
                    nat=spec.Nat("src", "fdff::1"),
                    exec_=(spec.SetField("ct_mark", 1),),
                ),
                spec.Output(spec.IN_PORT),
            ],
        ),
        f(
            4,
            11,
            {"eth_type": 0x86DD},
            [spec.Ct(zone=3, commit=True, nat=spec.Nat("dst", "fd00::11", 80))],
        ),
        f(5, 0, {}, []),
    ]
    text = ovs_decode(tmp_path, [ofmsg.flow_add(DP, fl) for fl in flows])
    assert "priority=100,ip " in text[0] and "actions=ct(table=1,zone=1,nat)" in text[0]
    assert "ct_state=+new+trk,tcp,nw_dst=10.30.0.1,tp_dst=80" in text[1]
    assert text[1].endswith("actions=group:7")
    assert f"cookie:{flows[1].cookie:#x}" in text[1]
    assert (
        f"actions=set_field:{GW}->eth_src,set_field:02:00:00:00:00:02->eth_dst,dec_ttl,output:3"
    ) in text[2]
    assert (
        "icmp6,icmp_type=135,icmp_code=0" in text[3]
        and "actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
        "move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[],"
        "move:NXM_NX_ND_TARGET[]->NXM_NX_IPV6_SRC[],set_field:136->icmpv6_type,"
        "resubmit(,3)"
        in text[3]
    )
    assert (
        "reg0=0x1/0x1,in_port=5" in text[4]
        and "actions=set_field:0x10->tun_id,ct_clear,CONTROLLER:65535,goto_table:4" in text[4]
    )
    assert (
        "actions=ct(commit,table=5,zone=2,nat(src=fdff::1),exec(set_field:0x1->ct_mark)),IN_PORT"
    ) in text[5]
    assert text[6].endswith("actions=ct(commit,zone=3,nat(dst=[fd00::11]:80))")
    assert text[7].endswith("actions=drop")


def test_groups_decode_with_selection_method_and_watch_ports(tmp_path):
    bucket = spec.Ct(1, True, 2, spec.Nat("dst", "10.18.0.2"), (spec.SetField("ct_mark", 1),))
    groups = [
        spec.GroupSpec(
            7,
            "select",
            (
                spec.Bucket((bucket,)),
                spec.Bucket((spec.Ct(1, True, 2, spec.Nat("dst", "10.18.0.3")),)),
            ),
            selection_method="dp_hash",
        ),
        spec.GroupSpec(
            8,
            "fast_failover",
            (
                spec.Bucket((spec.Output(3),), watch_port=3),
                spec.Bucket(
                    (spec.SetField("tun_id", 16), spec.Output(100)), watch_port=100, bucket_id=9
                ),
            ),
        ),
        spec.GroupSpec(
            9,
            "select",
            (spec.Bucket((spec.Output(3),), weight=5),),
            selection_method="hash",
            fields=("ipv4_src", "ipv4_dst", "ip_proto", "udp_src", "udp_dst"),
        ),
        spec.GroupSpec(10, "select", (spec.Bucket((spec.Output(3),)),)),
    ]
    msgs = [ofmsg.group_mod(DP, g) for g in groups]
    msgs.append(ofmsg.group_mod(DP, groups[0], ofp.OFPGC_MODIFY))
    msgs.append(ofmsg.group_delete(DP, 7))
    text = ovs_decode(tmp_path, msgs)
    assert (
        "ADD group_id=7,type=select,selection_method=dp_hash,"
        "bucket=bucket_id:0,actions=ct(commit,table=2,zone=1,nat(dst=10.18.0.2),"
        "exec(set_field:0x1->ct_mark)),"
        "bucket=bucket_id:1,actions=ct(commit,table=2,zone=1,nat(dst=10.18.0.3))"
    ) in text[0]
    assert (
        "ADD group_id=8,type=ff,bucket=bucket_id:0,watch_port:3,actions=output:3,"
        "bucket=bucket_id:9,watch_port:100,actions=set_field:0x10->tun_id,output:100"
    ) in text[1]
    assert (
        "selection_method=hash,fields(ip_src,ip_dst,nw_proto,udp_src,udp_dst),"
        "bucket=bucket_id:0,weight:5,actions=output:3"
    ) in text[2]
    assert "group_id=10,type=select,bucket=bucket_id:0,actions=output:3" in text[3]
    assert "MOD group_id=7,type=select,selection_method=dp_hash" in text[4]
    assert "DEL group_id=7" in text[5]


def test_selection_method_property_bytes():
    prop = ofcodec.selection_method_property("dp_hash")
    assert len(prop) == 40
    assert prop == (
        struct.pack("!HHII4x", 0xFFFF, 40, 0x154D, 1) + b"dp_hash".ljust(16, b"\0") + bytes(8)
    )
    with_fields = ofcodec.selection_method_property("hash", ("ipv4_src", "udp_dst"))
    # ipv4_src: OXM header 0x80001604 + 4 mask bytes; udp_dst: 0x80002002 + 2 mask bytes.
    tail = bytes.fromhex("80001604ffffffff") + bytes.fromhex("80002002ffff")
    assert struct.unpack_from("!H", with_fields, 2)[0] == 40 + len(tail)
    assert with_fields[40 : 40 + len(tail)] == tail
    assert len(with_fields) % 8 == 0 and with_fields[40 + len(tail) :] == bytes(2)
    with pytest.raises(ofmsg.SpecError):
        ofcodec.selection_method_property("dp_hash", ("ipv4_src",))
    with pytest.raises(ofmsg.SpecError):
        ofcodec.selection_method_property("random")


def test_bundle_and_packet_out_decode(tmp_path):
    flow = spec.Flow.make(1, 5, {"ipv4_dst": "10.30.0.9"}, [spec.Output(2)])
    msgs = ofmsg.bundle(DP, 42, [ofmsg.flow_add(DP, flow), ofmsg.flow_delete_cookie(DP, 77, 3)])
    msgs.append(ofmsg.packet_out(DP, bytes(64), ofp.OFPP_TABLE))
    text = ovs_decode(tmp_path, msgs)
    assert "bundle_id=0x2a type=OPEN_REQUEST flags=atomic ordered" in text[0]
    # ofp-parse prints each added message on its own after its BUNDLE_ADD line.
    assert "OFPT_BUNDLE_ADD_MESSAGE" in text[1] and "bundle_id=0x2a" in text[1]
    assert "OFPT_FLOW_MOD" in text[2] and "ADD table:1 priority=5,ip,nw_dst=10.30.0.9" in text[2]
    assert "DEL table:3 cookie:0x4d/0xffffffffffffffff" in text[4]
    assert "type=COMMIT_REQUEST" in text[5]
    assert f"cookie:{flow.cookie:#x}" in text[2]
    assert "in_port=CONTROLLER actions=TABLE data_len=64" in text[6]


def test_match_prerequisites_are_filled_or_refused():
    assert ofmsg.match_fields({"ipv4_dst": "10.30.0.1", "udp_dst": 53}) == {
        "ipv4_dst": "10.30.0.1",
        "udp_dst": 53,
        "ip_proto": 17,
        "eth_type": 0x0800,
    }
    assert ofmsg.match_fields({"icmpv6_type": 128}) == {
        "icmpv6_type": 128,
        "ip_proto": 58,
        "eth_type": 0x86DD,
    }
    assert ofmsg.match_fields({"arp_op": 1})["eth_type"] == 0x0806
    assert ofmsg.match_fields({"tun_id": 16}) == {"tunnel_id": 16}
    with pytest.raises(ofmsg.SpecError, match="eth_type"):
        ofmsg.match_fields({"tcp_dst": 80})
    with pytest.raises(ofmsg.SpecError):
        ofmsg.make_match({"no_such_field": 1})


def test_bad_records_are_refused_with_a_reason():
    with pytest.raises(ofmsg.SpecError, match="last"):
        ofmsg.make_instructions([spec.GotoTable(2), spec.Output(1)])
    with pytest.raises(ofmsg.SpecError, match="bucket"):
        ofmsg.make_actions([spec.GotoTable(2)])
    with pytest.raises(ofmsg.SpecError, match="select"):
        ofmsg.group_mod(DP, spec.GroupSpec(1, "fast_failover", (), selection_method="dp_hash"))
    with pytest.raises(ofmsg.SpecError, match="group type"):
        ofmsg.group_mod(DP, spec.GroupSpec(1, "random", ()))
    with pytest.raises(ofmsg.SpecError, match="nat kind"):
        ofmsg.make_action(spec.Ct(1, nat=spec.Nat("both", "10.0.0.1")))
    with pytest.raises(ofmsg.SpecError):
        ofmsg.make_action(object())


def test_group_desc_entry_reads_back_to_the_same_image():
    groups = [
        spec.GroupSpec(
            70,
            "select",
            (
                spec.Bucket((spec.Ct(1, True, 2, spec.Nat("dst", "10.18.0.2", 80)),)),
                spec.Bucket((spec.Output(4),)),
            ),
            selection_method="dp_hash",
        ),
        spec.GroupSpec(71, "fast_failover", (spec.Bucket((spec.Output(3),), watch_port=3),)),
    ]
    reply = bytearray()
    for g in groups:
        image = ofmsg.group_image(g)
        buckets = b"".join(image.buckets)
        length = ofp.OFP_GROUP_DESC_STATS_SIZE + len(buckets) + len(image.properties)
        reply += (
            struct.pack(
                ofp.OFP_GROUP_DESC_STATS_PACK_STR, length, image.type, g.group_id, len(buckets)
            )
            + buckets
            + image.properties
        )
    first = ofcodec.RawGroupDesc.parser(reply, 0)
    second = ofcodec.RawGroupDesc.parser(reply, first.length)
    assert first.image == ofmsg.group_image(groups[0])
    assert second.image == ofmsg.group_image(groups[1])
    assert first.image != ofmsg.group_image(
        spec.GroupSpec(70, "select", groups[0].buckets[:1], selection_method="dp_hash")
    )
