"""Service IPs and instance IPs through the pipeline, across simulated nodes and tunnels."""

from __future__ import annotations

from collections import Counter

import pytest

from oaknet.model import CLOSEST, ROUND_ROBIN, Instance, Service, ServiceIP
from sdn import pipeline as pl
from sdn.faketable import Packet
from sdn.logic_sim import SimNetwork, example_network
from sdn.spec import IN_PORT, owner_id, punt_owner, service_owner

pytestmark = pytest.mark.unit

# Per address family: the web service's service IPs, its two instances (n2 and n3), a client
# instance on n1, an address outside every range and an unallocated semantic address.
ADDR = {
    4: {
        "rr": "10.30.0.1",
        "closest": "10.30.0.2",
        "web0": "10.30.0.10",
        "web1": "10.30.0.11",
        "web0_ns": "10.18.0.66",
        "web1_ns": "10.18.0.130",
        "cli": "10.30.1.1",
        "cli_ns": "10.18.0.2",
        "cli2": "10.30.1.2",
        "cli2_ns": "10.18.0.67",
        "outside": "198.51.100.7",
        "unknown": "10.30.9.9",
    },
    6: {
        "rr": "fdff:2000::1",
        "closest": "fdff:1000::1",
        "web0": "fdff::10",
        "web1": "fdff::11",
        "web0_ns": "fc00::102",
        "web1_ns": "fc00::202",
        "cli": "fdff::101",
        "cli_ns": "fc00::2",
        "cli2": "fdff::102",
        "cli2_ns": "fc00::103",
        "outside": "2001:db8:99::7",
        "unknown": "fdff:9::9",
    },
}
NODE_IP = {"n1": "192.0.2.1", "n2": "192.0.2.2", "n3": "192.0.2.3"}
FAMILIES = pytest.mark.parametrize("v", [4, 6])


def _inst(number: int, node: str, fam: int, key: str) -> Instance:
    a4, a6 = ADDR[4], ADDR[6]
    return Instance(
        number,
        a4[key],
        a6[key],
        node_ip=NODE_IP[node],
        namespace_ip=a4[f"{key}_ns"],
        namespace_ip_v6=a6[f"{key}_ns"],
    )


def web_service(*placements: tuple[int, str, str]) -> Service:
    """The web service with instances (number, node, address key)."""
    a4, a6 = ADDR[4], ADDR[6]
    return Service(
        "app.ns.web.ns",
        service_ips=[
            ServiceIP(ROUND_ROBIN, a4["rr"], a6["rr"]),
            ServiceIP(CLOSEST, a4["closest"], a6["closest"]),
        ],
        instances=[_inst(n, node, 4, key) for n, node, key in placements],
    )


def client_service() -> Service:
    """A client service with instance 0 on n1 and instance 1 on n2."""
    return Service(
        "app.ns.cli.ns", instances=[_inst(0, "n1", 4, "cli"), _inst(1, "n2", 4, "cli2")]
    )


def setup(web: Service | None = None) -> tuple[SimNetwork, Service, Service]:
    """Three nodes: client 0 on n1 (ofport 11), client 1 on n2 (22), web 0 on n2 (21), web 1
    on n3 (31)."""
    net = example_network(3)
    web = web or web_service((0, "n2", "web0"), (1, "n3", "web1"))
    cli = client_service()
    net.nodes["n1"].attach(cli, 0, 11)
    net.nodes["n2"].attach(cli, 1, 22)
    for inst in web.instances:
        node = next((k for k, ip in NODE_IP.items() if ip == inst.node_ip), None)
        if node is None:
            continue
        net.nodes[node].attach(web, inst.number, {"n1": 12, "n2": 21, "n3": 31}[node])
    net.load([web, cli])
    return net, web, cli


def syn(
    v: int,
    dst: str,
    sport: int = 40000,
    proto: str = "tcp",
    in_port: int = 11,
    src: str = "cli_ns",
) -> Packet:
    """A new connection from a local container (client 0 on n1 by default)."""
    return Packet.ip(in_port, ADDR[v][src], dst, proto=proto, sport=sport)


def group_of(flows, groups, v: int, service_ip: str):
    """The group that new connections to ``service_ip`` are handed to."""
    dst = pl.V4.dst if v == 4 else pl.V6.dst
    flow = next(f for f in flows if f.match_dict().get(dst) == service_ip)
    return next(g for g in groups if g.group_id == flow.actions[-1].group_id)


def pick(index: int):
    """A select-group chooser that always takes bucket ``index``."""
    return lambda group, buckets, pkt: index


@FAMILIES
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_round_robin_spreads_over_every_instance(v, proto):
    net, web, _ = setup()
    n1 = net.nodes["n1"]
    flows, groups = n1.pipeline.service_flows(web, n1.ports, n1.peers, n1.costs)
    rr_group = group_of(flows, groups, v, ADDR[v]["rr"])
    assert rr_group.type == "select"
    assert rr_group.selection_method == "dp_hash"
    assert [b.weight for b in rr_group.buckets] == [1, 1]

    landed = Counter()
    for sport in range(40000, 40040):
        hop = net.deliver("n1", syn(v, ADDR[v]["rr"], sport, proto))
        landed[(hop.node, hop.port)] += 1
        assert hop.packet.ip_src == ADDR[v]["cli"]
    assert set(landed) == {("n2", 21), ("n3", 31)}
    assert min(landed.values()) >= 8  # each instance gets >= 20 %


@FAMILIES
def test_remote_bucket_dnats_to_instance_ip_and_snats_to_client_instance_ip(v):
    net, _, _ = setup()
    result = net.nodes["n1"].switch.send(syn(v, ADDR[v]["rr"]), choose=pick(0))
    out = result.only()
    assert out.port == 102  # the tunnel to n2, where web 0 runs
    assert out.packet.tunnel_id == pl.VNI
    assert out.packet.ip_dst == ADDR[v]["web0"]
    assert out.packet.ip_src == ADDR[v]["cli"]
    assert (out.packet.tp_src, out.packet.tp_dst) == (40000, 80)


@FAMILIES
def test_server_sees_client_instance_ip_and_reply_shows_service_ip(v):
    net, _, _ = setup()
    hop = net.deliver("n1", syn(v, ADDR[v]["rr"]), choose=pick(1))
    assert (hop.node, hop.port) == ("n3", 31)
    assert hop.packet.ip_dst == ADDR[v]["web1_ns"]
    assert hop.packet.ip_src == ADDR[v]["cli"]
    assert hop.packet.eth_dst == net.nodes["n3"].ports["p31"].mac

    back = net.deliver("n3", hop.packet.reply(31))
    assert (back.node, back.port) == ("n1", 11)
    assert back.packet.ip_src == ADDR[v]["rr"]
    assert back.packet.ip_dst == ADDR[v]["cli_ns"]
    assert (back.packet.tp_src, back.packet.tp_dst) == (80, 40000)

    again = net.deliver("n1", syn(v, ADDR[v]["rr"]), choose=pick(0))
    assert (again.node, again.port) == ("n3", 31)  # established: conntrack, not the group


@FAMILIES
def test_server_connects_back_to_the_client_instance_ip(v):
    net, _, _ = setup()
    conn = Packet.ip(31, ADDR[v]["web1_ns"], ADDR[v]["cli"], sport=5000, dport=9000)
    hop = net.deliver("n3", conn)
    assert (hop.node, hop.port) == ("n1", 11)
    assert hop.packet.ip_dst == ADDR[v]["cli_ns"]
    assert hop.packet.ip_src == ADDR[v]["web1"]
    back = net.deliver("n1", hop.packet.reply(11))
    assert (back.node, back.port) == ("n3", 31)
    assert back.packet.ip_src == ADDR[v]["cli"]
    assert back.packet.ip_dst == ADDR[v]["web1_ns"]


@FAMILIES
def test_instance_ip_reaches_exactly_its_instance(v):
    net, _, _ = setup()
    for sport in range(40000, 40020):
        hop = net.deliver("n1", syn(v, ADDR[v]["web1"], sport))
        assert (hop.node, hop.port, hop.packet.ip_dst) == ("n3", 31, ADDR[v]["web1_ns"])
        back = net.deliver("n3", hop.packet.reply(31))
        assert back.packet.ip_src == ADDR[v]["web1"]


@FAMILIES
def test_a_connection_to_a_remote_instance_ip_carries_on_after_its_first_packet(v):
    net, _, _ = setup()
    first = net.deliver("n1", syn(v, ADDR[v]["web1"]))
    net.deliver("n3", first.packet.reply(31))
    # The client's next packets (the handshake's end, data) take the established path: its
    # namespace IP is translated once, after the DNAT zone found the connection.
    for _ in range(3):
        hop = net.deliver("n1", syn(v, ADDR[v]["web1"]))
        assert (hop.node, hop.port) == ("n3", 31)
        assert (hop.packet.ip_src, hop.packet.ip_dst) == (ADDR[v]["cli"], ADDR[v]["web1_ns"])
        back = net.deliver("n3", hop.packet.reply(31))
        assert (back.node, back.port) == ("n1", 11)
        assert (back.packet.ip_src, back.packet.ip_dst) == (ADDR[v]["web1"], ADDR[v]["cli_ns"])


@FAMILIES
def test_instance_ip_follows_its_instance_after_a_move(v):
    net, _, cli = setup()
    moved = web_service((0, "n2", "web0"), (1, "n2", "web1"))
    net.nodes["n3"].ports.clear()
    net.nodes["n2"].attach(moved, 1, 23)
    net.load([moved, cli])
    hop = net.deliver("n1", syn(v, ADDR[v]["web1"]))
    assert (hop.node, hop.port) == ("n2", 23)


@FAMILIES
def test_local_bucket_dnats_to_namespace_ip(v):
    net, _, _ = setup()
    # client 1 on n2 calls the service; bucket 0 is web 0 on the same node
    result = net.nodes["n2"].switch.send(
        syn(v, ADDR[v]["rr"], in_port=22, src="cli2_ns"), choose=pick(0)
    )
    out = result.only()
    assert out.port == 21
    assert out.packet.ip_dst == ADDR[v]["web0_ns"]
    assert out.packet.ip_src == ADDR[v]["cli2"]
    back = net.nodes["n2"].switch.send(out.packet.reply(21)).only()
    assert (back.port, back.packet.ip_src, back.packet.ip_dst) == (
        22,
        ADDR[v]["rr"],
        ADDR[v]["cli2_ns"],
    )


@FAMILIES
def test_hairpin_instance_reaches_itself_through_its_service_ip(v):
    net, _, _ = setup()
    n2 = net.nodes["n2"].switch
    call = Packet.ip(21, ADDR[v]["web0_ns"], ADDR[v]["rr"], sport=41000)
    result = n2.send(call, choose=pick(0))
    out = result.only()
    assert out.port == 21 and result.dropped_to_in_port == 0
    assert result.trace[-1].actions[-1].port == IN_PORT
    assert out.packet.ip_src == ADDR[v]["web0"]  # SNAT: never its own address
    assert out.packet.ip_dst == ADDR[v]["web0_ns"]
    answer = n2.send(out.packet.reply(21)).only()
    assert answer.port == 21
    assert (answer.packet.ip_src, answer.packet.ip_dst) == (ADDR[v]["rr"], ADDR[v]["web0_ns"])


@FAMILIES
def test_closest_orders_by_cost_and_fails_over_without_controller(v):
    net, _, cli = setup()
    n1 = net.nodes["n1"]
    n1.costs.update({NODE_IP["n2"]: 20.0, NODE_IP["n3"]: 2.0})
    web = web_service((0, "n2", "web0"), (1, "n3", "web1"))
    net.load([web, cli])
    flows, groups = n1.pipeline.service_flows(web, n1.ports, n1.peers, n1.costs)
    ff = group_of(flows, groups, v, ADDR[v]["closest"])
    assert ff.type == "fast_failover"
    assert [b.watch_port for b in ff.buckets] == [103, 102]

    for sport in range(40000, 40010):
        hop = net.deliver("n1", syn(v, ADDR[v]["closest"], sport))
        assert (hop.node, hop.port) == ("n3", 31)
    n1.switch.dead_ports.add(103)  # BFD declares the tunnel to n3 down
    hop = net.deliver("n1", syn(v, ADDR[v]["closest"], 41000))
    assert (hop.node, hop.port) == ("n2", 21)


@FAMILIES
def test_closest_prefers_a_local_instance(v):
    web = web_service((0, "n2", "web0"), (1, "n3", "web1"), (2, "n1", "web0"))
    web.instances[2] = Instance(
        2,
        "10.30.0.12",
        "fdff::12",
        node_ip=NODE_IP["n1"],
        namespace_ip="10.18.0.3",
        namespace_ip_v6="fc00::3",
    )
    net, _, _ = setup(web)
    n1 = net.nodes["n1"]
    n1.costs.update({NODE_IP["n2"]: 1.0, NODE_IP["n3"]: 2.0})
    net.load([web, client_service()])
    hop = net.deliver("n1", syn(v, ADDR[v]["closest"]))
    assert (hop.node, hop.port) == ("n1", 12)
    assert hop.packet.ip_dst == ("10.18.0.3" if v == 4 else "fc00::3")


def test_closest_puts_unmeasured_nodes_last():
    net, web, _ = setup()
    n1 = net.nodes["n1"]
    n1.costs.update({NODE_IP["n3"]: 50.0})
    _, groups = n1.pipeline.service_flows(web, n1.ports, n1.peers, n1.costs)
    ff = [g for g in groups if g.type == "fast_failover"]
    assert ff and all([b.watch_port for b in g.buckets] == [103, 102] for g in ff)


@FAMILIES
def test_service_without_instances_punts_reject(v):
    net, _, _ = setup(web_service())
    deliveries, punts = net.send("n1", syn(v, ADDR[v]["rr"]))
    assert not deliveries and len(punts) == 1
    assert punts[0].emitted.cookie >> 32 == owner_id(punt_owner("reject"))
    assert punts[0].packet.ip_dst == ADDR[v]["rr"]  # pre-NAT, as the agent needs it


def test_unplaced_instance_punts_reject_and_has_no_group():
    web = web_service()
    web.instances.append(Instance(0, "10.30.0.10", "fdff::10"))  # scheduled, not placed
    net, _, _ = setup(web)
    n1 = net.nodes["n1"]
    flows, groups = n1.pipeline.service_flows(web, n1.ports, n1.peers, n1.costs)
    assert groups == []
    assert {f.owner for f in flows} == {punt_owner("reject")}
    _, punts = net.send("n1", syn(4, ADDR[4]["web0"]))
    assert len(punts) == 1


@FAMILIES
def test_unknown_semantic_address_punts_unknown(v):
    net, _, _ = setup()
    deliveries, punts = net.send("n1", syn(v, ADDR[v]["unknown"]))
    assert not deliveries
    assert [p.emitted.cookie >> 32 for p in punts] == [owner_id(punt_owner("unknown"))]


@FAMILIES
def test_ping_to_a_service_ip_is_answered_by_an_instance(v):
    net, _, _ = setup()
    ping = syn(v, ADDR[v]["rr"], sport=7, proto="icmp")
    hop = net.deliver("n1", ping)
    assert hop.packet.ip_dst in (ADDR[v]["web0_ns"], ADDR[v]["web1_ns"])
    pong = net.deliver(hop.node, hop.packet.reply(hop.port))
    assert (pong.node, pong.port) == ("n1", 11)
    assert pong.packet.ip_src == ADDR[v]["rr"]
    assert pong.packet.icmp_type == (0 if v == 4 else 129)


@FAMILIES
def test_icmp_error_from_an_instance_shows_the_service_ip(v):
    net, _, _ = setup()
    datagram = syn(v, ADDR[v]["rr"], proto="udp", sport=5353)
    hop = net.deliver("n1", datagram, choose=pick(1))
    error = Packet.icmp_error(
        31, ADDR[v]["web1_ns"], hop.packet, type_=3 if v == 4 else 1, code=3 if v == 4 else 4
    )
    back = net.deliver("n3", error)
    assert (back.node, back.port) == ("n1", 11)
    assert back.packet.ip_src == ADDR[v]["rr"]
    assert back.packet.ip_dst == ADDR[v]["cli_ns"]
    assert (back.packet.inner.ip_src, back.packet.inner.ip_dst) == (
        ADDR[v]["cli_ns"],
        ADDR[v]["rr"],
    )


def test_instance_change_recomputes_only_that_service():
    net, web, cli = setup()
    n1 = net.nodes["n1"]
    other = Service(
        "app.ns.db.ns",
        service_ips=[ServiceIP(ROUND_ROBIN, "10.30.0.20")],
        instances=[Instance(0, "10.30.0.21", node_ip=NODE_IP["n3"], namespace_ip="10.18.0.140")],
    )
    before = {
        s.name: n1.pipeline.service_flows(s, n1.ports, n1.peers, n1.costs)
        for s in (web, cli, other)
    }
    changed = web_service((0, "n2", "web0"))  # instance 1 is gone
    after_web = n1.pipeline.service_flows(changed, n1.ports, n1.peers, n1.costs)
    for svc in (cli, other):
        assert n1.pipeline.service_flows(svc, n1.ports, n1.peers, n1.costs) == before[svc.name]

    old_flows, old_groups = before[web.name]
    new_flows, new_groups = after_web
    gone = set(old_flows) - set(new_flows)
    assert gone and all(f.owner == service_owner(web.name) for f in gone)
    assert all(f.owner == service_owner(web.name) for f in set(new_flows) - set(old_flows))
    # Same group ids, each group replaced as a whole with one bucket fewer.
    assert [g.group_id for g in old_groups] == [g.group_id for g in new_groups]
    assert all(len(n.buckets) == len(o.buckets) - 1 for o, n in zip(old_groups, new_groups))


def test_traffic_outside_the_pipeline_is_dropped():
    net, _, _ = setup()
    n1 = net.nodes["n1"].switch
    for v in (4, 6):
        assert n1.send(syn(v, ADDR[v]["outside"])).dropped
        spoofed = Packet.ip(11, ADDR[v]["web0_ns"], ADDR[v]["rr"])
        assert n1.send(spoofed).dropped
    # From a tunnel, only instance IPs of local instances (and replies) are accepted.
    stray = Packet.ip(102, ADDR[4]["web0"], ADDR[4]["rr"], tunnel_id=pl.VNI)
    assert n1.send(stray).dropped
    wrong_vni = Packet.ip(102, ADDR[4]["web0"], ADDR[4]["cli"], tunnel_id=0x99)
    assert n1.send(wrong_vni).dropped
    lldp = Packet(11, eth_type=0x88CC)
    assert n1.send(lldp).dropped
