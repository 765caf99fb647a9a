"""The agent's pure parts: reject answers, RTT ranking, address pool, config, table file."""

import json
import math
import struct

import pytest

from sdn import config, reject, rtt
from sdn.local import AddressPool, LocalError, parse_port_mappings
from sdn.table import TableError, TableFile, parse_table

pytestmark = pytest.mark.unit

CLIENT_MAC = bytes.fromhex("026f00000002")
GW_MAC = bytes.fromhex("0a0000000001")


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    """An Ethernet frame client -> gateway carrying an IPv4 packet."""
    ip = reject._ipv4(
        bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))), proto, payload
    )
    return GW_MAC + CLIENT_MAC + b"\x08\x00" + ip


def tcp_syn(seq: int = 1000) -> bytes:
    return struct.pack("!HHIIHHHH", 40000, 80, seq, 0, (5 << 12) | reject.TCP_SYN, 1024, 0, 0)


def test_tcp_syn_gets_rst_ack_from_the_service_ip():
    frame = ipv4("10.18.0.3", "10.30.0.9", reject.TCP, tcp_syn(1000))
    out = reject.reject_reply(frame)
    assert out[:6] == CLIENT_MAC and out[6:12] == GW_MAC
    ip = out[14:34]
    assert ip[12:16] == bytes([10, 30, 0, 9]) and ip[16:20] == bytes([10, 18, 0, 3])
    assert reject.checksum(ip) == 0
    sport, dport, seq, ack, flags = struct.unpack_from("!HHIIH", out, 34)
    assert (sport, dport, seq, ack) == (80, 40000, 0, 1001)
    assert flags & 0x3F == reject.TCP_RST | reject.TCP_ACK
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(out) - 34)
    assert reject.checksum(pseudo + out[34:]) == 0


def test_udp_gets_port_unreachable_quoting_the_datagram():
    udp = struct.pack("!HHHH", 5555, 53, 12, 0) + b"abcd"
    frame = ipv4("10.18.0.3", "10.30.0.9", reject.UDP, udp)
    out = reject.reject_reply(frame)
    icmp = out[34:]
    assert icmp[0:2] == bytes([3, 3]) and reject.checksum(icmp) == 0
    assert icmp[8:] == frame[14:]  # the whole original datagram quoted


def test_ipv6_and_never_an_error_about_an_error():
    src, dst = bytes(15) + b"\x03", b"\xfd\xff" + bytes(13) + b"\x09"
    udp = struct.pack("!HHHH", 5555, 53, 8, 0)
    frame = GW_MAC + CLIENT_MAC + b"\x86\xdd" + reject._ipv6(src, dst, reject.UDP, udp)
    out = reject.reject_reply(frame)
    assert out[14 + 6] == reject.ICMPV6 and out[14 + 8 : 14 + 24] == dst
    icmp = out[54:]
    assert icmp[0:2] == bytes([1, 4])
    assert reject._l4_checksum(6, dst, src, reject.ICMPV6, icmp) == 0
    error = reject._ipv6(src, dst, reject.ICMPV6, bytes([1, 4, 0, 0]) + bytes(4))
    assert reject.reject_reply(GW_MAC + CLIENT_MAC + b"\x86\xdd" + error) is None
    icmp4_err = ipv4("10.18.0.3", "10.30.0.9", reject.ICMP, bytes([3, 1, 0, 0]) + bytes(4))
    assert reject.reject_reply(icmp4_err) is None
    rst = struct.pack("!HHIIHHHH", 1, 2, 3, 4, (5 << 12) | reject.TCP_RST, 0, 0, 0)
    assert reject.reject_reply(ipv4("10.18.0.3", "10.30.0.9", reject.TCP, rst)) is None
    assert reject.reject_reply(b"\x00" * 10) is None


def test_ranking_changes_only_by_a_clear_margin():
    pub = {"a": 2.0, "b": 2.4}
    assert not rtt.ranking_changed(pub, {"a": 2.5, "b": 2.2})  # within the margin
    assert rtt.ranking_changed(pub, {"a": 20.0, "b": 2.2})  # clearly reordered
    assert rtt.ranking_changed(pub, {"a": 2.0, "b": math.inf})  # b became unreachable
    assert rtt.reachability_changed({"a": math.inf}, {"a": 1.0})
    assert not rtt.reachability_changed({"a": 3.0}, {"a": 1.0})


def test_address_pool_skips_the_gateway_and_does_not_reuse_at_once():
    pool = AddressPool("10.18.0.0/29", "fc00::/120")
    first = pool.allocate()
    assert first == (2, "10.18.0.2", "fc00::2")
    second = pool.allocate()
    pool.release(first[0])
    assert pool.allocate()[1] == "10.18.0.4"  # not .2 again right away
    assert pool.index_of("10.18.0.3") == second[0] and pool.index_of("10.18.0.1") is None
    pool.allocate(), pool.allocate()
    assert pool.allocate()[1] == "10.18.0.2"  # wraps to the freed one
    with pytest.raises(LocalError) as exc:
        pool.allocate()
    assert exc.value.status == 409


def test_port_mapping_text():
    assert [
        (m.host_port, m.container_port, m.protocol) for m in parse_port_mappings("8080:80; 53/udp")
    ] == [(8080, 80, "tcp"), (53, 53, "udp")]
    for bad in ("0:80", "80:80;80", "x", "6081/udp"):
        with pytest.raises(LocalError):
            parse_port_mappings(bad)


def test_config_defaults_and_clear_errors(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "node_name: n1\nnode_ip: 192.0.2.1\nsubnet_v4: 10.18.0.0/26\nservice_table: table.json\n"
    )
    cfg = config.load(str(path))
    assert cfg.gateway_mac == config.derive_gateway_mac("10.18.0.0/26")
    assert cfg.service_table == str(tmp_path / "table.json")
    assert int(cfg.gateway_mac[:2], 16) & 1 == 0
    for bad, word in [
        ({"node_ip": "::1"}, "node_ip"),
        ({"subnet_v4": "10.0.0.0/31"}, "small"),
        ({"peers": ["192.0.2.1"]}, "own"),
        ({"colour": 1}, "unknown"),
        ({"gateway_mac": "01:00:00:00:00:01"}, "multicast"),
    ]:
        data = {"node_name": "n1", "node_ip": "192.0.2.1", "subnet_v4": "10.18.0.0/26", **bad}
        with pytest.raises(config.ConfigError, match=word):
            config.from_dict(data)


def test_table_file_reload_and_errors(tmp_path):
    path = tmp_path / "t.json"
    svc = {"name": "a.b.c.d", "service_ips": [{"policy": "round-robin", "ipv4": "10.30.0.1"}]}
    path.write_text(json.dumps([svc]))
    tf = TableFile(str(path))
    assert list(tf.read()) == ["a.b.c.d"]
    assert tf.changed() is None
    other = {"name": "e.f.g.h", "service_ips": [{"policy": "round-robin", "ipv4": "10.30.0.2"}]}
    path.write_text(json.dumps({"services": [svc, other]}))
    assert sorted(tf.changed()) == ["a.b.c.d", "e.f.g.h"]
    with pytest.raises(TableError, match="address 10.30.0.1 is a.b.c.d's already"):
        parse_table([svc, {**svc, "name": "e.f.g.h"}])
    with pytest.raises(TableError, match="twice"):
        parse_table([svc, svc])
    with pytest.raises(TableError, match="#0"):
        parse_table([{"name": "bad"}])
    for bad in ({"audit_interval_s": -1}, {"audit_interval_s": 0.5}):
        data = {"node_name": "n1", "node_ip": "192.0.2.1", "subnet_v4": "10.18.0.0/26", **bad}
        with pytest.raises(config.ConfigError, match="audit_interval_s"):
            config.from_dict(data)


def test_table_file_parses_only_the_entries_that_changed(tmp_path):
    path = tmp_path / "t.json"
    one = {"name": "a.b.c.d", "service_ips": [{"policy": "round-robin", "ipv4": "10.30.0.1"}]}
    two = {"name": "e.f.g.h", "service_ips": [{"policy": "round-robin", "ipv4": "10.30.0.2"}]}
    path.write_text(json.dumps([one, two]))
    tf = TableFile(str(path))
    first = tf.read()
    moved = {**two, "service_ips": [{"policy": "round-robin", "ipv4": "10.30.0.3"}]}
    path.write_text(json.dumps([one, moved]))
    second = tf.changed()
    assert second["a.b.c.d"] is first["a.b.c.d"]  # unchanged: not parsed again
    assert second["e.f.g.h"].service_ip("round-robin").ipv4 == "10.30.0.3"

    # A bad entry is still refused (naming the file), and the next good file is read whole.
    path.write_text(json.dumps([one, {**moved, "service_ips": [{"policy": "x"}]}]))
    with pytest.raises(TableError, match=r"t\.json: service #1"):
        tf.changed()
    path.write_text(json.dumps([one]))
    assert list(tf.changed()) == ["a.b.c.d"]
