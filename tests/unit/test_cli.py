"""The CLI's pure parts: tables, the service listing, trace packets and trace reading."""

from __future__ import annotations

import ipaddress

import pytest

from oaknet import cli, cli_testbed, cli_trace, cli_trace_text
from oaknet.cli_util import render_table
from oaknet.model import Instance, Service, ServiceIP
from sdn.spec import owner_id, punt_owner

pytestmark = pytest.mark.unit


def test_render_table_aligns_columns_and_shows_none_as_dash():
    text = render_table(["A", "LONGER"], [["x", None], ["wide value", 3]])
    assert text.splitlines() == [
        "A           LONGER",
        "x           -",
        "wide value  3",
    ]


def test_format_services_lists_service_ips_then_instances():
    web = Service(
        "shop.default.web.default",
        "j1",
        [
            ServiceIP("round-robin", "10.30.0.1", "fdff:2000::1"),
            ServiceIP("closest", "10.30.0.2", None),
        ],
        [
            Instance(1, "10.30.0.4", cluster_id="c2"),
            Instance(0, "10.30.0.3", "fdff::1", "c1", "w1", "192.0.2.1", status="running"),
        ],
    )
    bare = Service("a.b.c.d", "j2")
    assert cli.format_services([web, bare]).splitlines() == [
        "SERVICE                   POLICY       SERVICE IPv4  SERVICE IPv6  INSTANCES",
        "a.b.c.d                   -            -             -             0",
        "shop.default.web.default  round-robin  10.30.0.1     fdff:2000::1  2",
        "                          closest      10.30.0.2     -",
        "",
        (
            "SERVICE                   #  INSTANCE IPv4  INSTANCE IPv6  NODE  NODE IP    CLUSTER  "
            "STATUS"
        ),
        (
            "shop.default.web.default  0  10.30.0.3      fdff::1        w1    192.0.2.1  c1       "
            "running"
        ),
        (
            "shop.default.web.default  1  10.30.0.4      -              -     -          c2       "
            "scheduled"
        ),
    ]


REFUSED = (
    "GET http://127.0.0.1:9/api/health: ConnectionError: HTTPConnectionPool(host='127.0.0.1', "
    "port=9): Max retries exceeded with url: /api/health (Caused by NewConnectionError("
    "'<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new "
    "connection: [Errno 111] Connection refused')) (after 1 attempts)"
)
TIMEOUT = (
    "GET http://10.0.0.1/x: ConnectTimeout: HTTPConnectionPool(...): Max retries exceeded "
    "(Caused by ConnectTimeoutError(..., 'Connection to 10.0.0.1 timed out.'))"
)


@pytest.mark.parametrize(
    ("text", "reason"), [(REFUSED, "Connection refused"), (TIMEOUT, "timed out")]
)
def test_reason_keeps_the_cause_of_a_connection_error(text, reason):
    assert cli._reason(Exception(text)) == reason


def test_guess_kind_from_the_default_ports():
    assert cli._guess_kind("http://127.0.0.1:10110") == "cluster manager"
    assert cli._guess_kind("http://[::1]:10099") == "root manager"
    assert cli._guess_kind("http://example.invalid:bad") == "root manager"


def _source(ofport=3, ip="10.18.0.3", kind="", options=None) -> cli_trace.Source:
    port = cli_trace_text.Port("okc1", ofport, kind, {}, options or {})
    return cli_trace.Source(port, ip, "02:6f:00:00:00:03")


def test_packet_flow_is_the_first_packet_of_a_new_connection():
    gw = "0a:00:00:00:00:01"
    v4 = ipaddress.ip_address("10.30.0.1")
    assert cli_trace.packet_flow(_source(), gw, v4, "tcp", 40000, 80) == (
        "in_port=3,dl_src=02:6f:00:00:00:03,dl_dst=0a:00:00:00:00:01,tcp,nw_src=10.18.0.3,"
        "nw_dst=10.30.0.1,nw_ttl=64,tcp_src=40000,tcp_dst=80,tcp_flags=syn"
    )
    v6 = ipaddress.ip_address("fdff:2000::1")
    assert cli_trace.packet_flow(_source(ip="fc00::3"), gw, v6, "udp", 5, 53).endswith(
        ",udp6,ipv6_src=fc00::3,ipv6_dst=fdff:2000::1,nw_ttl=64,udp_src=5,udp_dst=53"
    )
    assert ",icmp6,icmp_type=128,icmp_code=0,ipv6_src=" in cli_trace.packet_flow(
        _source(ip="fc00::3"), gw, v6, "icmp", 5, 53
    )
    tunnel = _source(ofport=1, kind="vxlan", options={"remote_ip": "192.0.2.2"})
    assert ",tun_id=0x10,tun_src=192.0.2.2,icmp,icmp_type=8," in cli_trace.packet_flow(
        tunnel, gw, v4, "icmp", 5, 53
    )


def test_match_port_by_ofport_name_instance_and_address():
    ports = {
        2: cli_trace_text.Port(
            "okca",
            2,
            "",
            {
                "oaknet-service": "a.b.c.d",
                "oaknet-instance": "0",
                "oaknet-ipv4": "10.18.0.2",
                "oaknet-ipv6": "fc00::2",
            },
        ),
        1: cli_trace_text.Port("vx1", 1, "vxlan", {}, {"remote_ip": "192.0.2.2"}),
    }
    agent = [
        {
            "port_name": "okca",
            "namespace_ip": "10.18.0.2",
            "namespace_ip_v6": "fc00::2",
            "instance_ip": "10.30.0.11",
            "instance_ip_v6": "fdff::11",
        }
    ]
    match = cli_trace._match_port
    assert match(ports, [], "2", 4) == (ports[2], None)
    assert match(ports, [], "vx1", 4) == (ports[1], None)
    assert match(ports, [], "a.b.c.d#0", 4) == (ports[2], None)
    assert match(ports, [], "fc00::2", 6) == (ports[2], "fc00::2")
    # An instance IP is the container's address to others; it sends from its namespace IP.
    assert match(ports, agent, "10.30.0.11", 4) == (ports[2], "10.18.0.2")
    assert match(ports, agent, "fdff::11", 6) == (ports[2], "fc00::2")
    for spec, message in (
        ("9", "no port with ofport 9"),
        ("a.b.c.d#1", "no container of"),
        ("10.9.9.9", "no local container has the address 10.9.9.9"),
        ("what", "is no port name"),
    ):
        with pytest.raises(cli.CliError, match=message):
            match(ports, agent, spec, 4)
    assert ports[1].describe() == "vx1 (vxlan tunnel to 192.0.2.2)"
    assert ports[2].describe() == "okca (container a.b.c.d#0)"


# Shortened ofproto/trace output of OVS 3.1, in its own layout.
HEAD = """\
Flow: tcp,in_port=3,nw_src=10.18.0.3,nw_dst=10.30.0.1,tp_src=40000,tp_dst=80

bridge("br-int")
----------------
 0. ip,in_port=3,nw_src=10.18.0.3, priority 100, cookie 0x1
    goto_table:1
 1. ip,nw_dst=10.30.0.0/16, priority 100, cookie 0x2
    ct(table=2,zone=2,nat)
     -> A clone of the packet is forked to recirculate.

Final flow: tcp,reg0=0x1,in_port=3,nw_src=10.18.0.3,nw_dst=10.30.0.1,tp_src=40000,tp_dst=80
Megaflow: recirc_id=0,eth,ip,in_port=3,nw_frag=no
Datapath actions: ct(zone=2,nat),recirc(0x1)

===============================================================================
recirc(0x1) - resume conntrack with default ct_state=trk|new (use --ct-next to customize)
===============================================================================

Flow: recirc_id=0x1,ct_state=new|trk,eth,tcp,in_port=3,nw_src=10.18.0.3,nw_dst=10.30.0.1

bridge("br-int")
----------------
    thaw
        Resuming from table 3
 3. ct_state=+new+trk,ip,reg0=0x1,nw_dst=10.30.0.1, priority 200, cookie 0x3
    group:169738241
     -> no live bucket

Final flow: recirc_id=0x1,ct_state=new|trk,eth,tcp,reg0=0x1,in_port=3,nw_src=10.18.0.3
Megaflow: recirc_id=0x1,ct_state=+new-inv+trk,eth,ip,in_port=3,nw_dst=10.30.0.1,nw_frag=no
Datapath actions: hash(l4(0)),recirc(0x2)
"""

TUNNEL = """\
bridge("br-int")
----------------
 5. ip,nw_dst=10.30.0.12, priority 100, cookie 0x4
    set_field:0x10->tun_id
    output:1
     -> output to native tunnel
     -> tunneling to 192.0.2.2 via br-phy

bridge("br-phy")
----------------
 0. priority 0
    NORMAL

Final flow: recirc_id=0xe,eth,tcp,in_port=3,nw_src=10.30.0.21,nw_dst=10.30.0.12,tp_src=40000,\
tp_dst=80
Datapath actions: tnl_push(tnl_port(4),header(...),out_port(1)),2
"""


def test_annotate_names_the_tables_and_ports_and_drops_ovs_internals():
    ports = {1: cli_trace_text.Port("vx1", 1, "vxlan", {}, {"remote_ip": "192.0.2.2"})}
    text = cli_trace_text.annotate(HEAD + TUNNEL, ports, "br-int")
    assert " 0. [classify] ip,in_port=3,nw_src=10.18.0.3, priority 100, cookie 0x1" in text
    assert " 1. [unsnat] " in text and " 3. [service] " in text and " 5. [routing] " in text
    assert "        Resuming from table 3 (service)" in text
    assert "    output:1  -> vx1 (vxlan tunnel to 192.0.2.2)" in text
    # br-phy's table 0 is not the pipeline's classify table.
    assert " 0. priority 0" in text
    for noise in ("Megaflow:", "Final flow:", "Datapath actions:", "====", "A clone of"):
        assert noise not in text
    full = cli_trace_text.annotate(HEAD, ports, "br-int", full=True)
    assert "Megaflow:" in full and " 3. [service] " in full


def test_verdicts():
    ports = {
        2: cli_trace_text.Port(
            "okca", 2, "", {"oaknet-service": "a.b.c.d", "oaknet-instance": "0"}
        )
    }
    verdict = cli_trace_text.verdict
    assert verdict(TUNNEL, ports) == (
        "into the tunnel to node 192.0.2.2, as 10.30.0.21:40000 -> 10.30.0.12:80"
    )
    local = (
        'bridge("br-int")\n 5. ip,nw_dst=10.18.0.2, priority 100\n    output:2\n\n'
        "Final flow: icmp,in_port=3,nw_src=10.30.0.21,nw_dst=10.18.0.2\n"
        "Datapath actions: 5\n"
    )
    assert verdict(local, ports) == "out of okca (container a.b.c.d#0), as 10.30.0.21 -> 10.18.0.2"
    hairpin = local.replace("output:2", "IN_PORT")
    assert verdict(hairpin, ports).startswith("back out of the port it came in on (hairpin)")
    dropped = "Final flow: unchanged\nDatapath actions: drop\n"
    assert verdict(dropped, ports) == "dropped"
    assert verdict(_punt("reject"), ports) == (
        "sent to the node agent: no live instance, it answers with a TCP reset or ICMP "
        "unreachable, as 10.18.0.3:1 -> 10.30.0.9:80"
    )
    assert verdict(_punt("unknown"), ports).startswith(
        "sent to the node agent: an address of a semantic range this node does not know"
    )


def _punt(kind: str) -> str:
    """A trace ending in a controller action of the agent's punt flow of ``kind``."""
    cookie = owner_id(punt_owner(kind)) << 32 | 0x1234
    return (
        f'bridge("br-int")\n 3. ct_state=+new+trk,ip, priority 200, cookie {cookie:#x}\n'
        "    CONTROLLER:65535\n\nFinal flow: unchanged\n"
        "Flow: tcp,in_port=3,nw_src=10.18.0.3,nw_dst=10.30.0.9,tp_src=1,tp_dst=80\n"
        "Datapath actions: userspace(pid=0,controller(reason=1))\n"
    )


def test_hash_recirc_is_found_only_at_the_end():
    assert cli_trace._hash_recirc(HEAD) == "0x2"
    assert cli_trace._hash_recirc(TUNNEL) is None


def test_testbed_up_runs_the_demo_with_keep(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(cli_testbed, "DEMO", tmp_path / "demo.sh")
    assert cli.main(["testbed", "up"]) == 1
    assert capfd.readouterr().err.strip() == (
        f"oaknet: testbed up is not available: {tmp_path / 'demo.sh'} is not part of this "
        "installation"
    )
    (tmp_path / "demo.sh").write_text('echo "demo $*"; exit 3\n')
    assert cli.main(["testbed", "up"]) == 3
    assert capfd.readouterr().out == "demo --keep\n"
    assert cli.main(["testbed", "up", "--prefix", "okd1"]) == 3
    assert capfd.readouterr().out == "demo --keep --prefix okd1\n"


def test_testbed_down_refuses_what_is_not_a_prefix(capfd):
    assert cli.main(["testbed", "down", "Bad-Prefix"]) == 2
    assert "is not a testbed prefix" in capfd.readouterr().err


def test_node_status_shows_the_cluster_link_and_why_it_is_down():
    from oaknet.cli_node import format_status

    health = {
        "node": "w1",
        "node_ip": "192.0.2.1",
        "switch": {"connected": True, "reconciled": False},
        "cluster": {
            "url": "http://192.0.2.11:10110",
            "node_id": "w1",
            "connected": False,
            "revision": 7,
            "pending_reports": 2,
            "last_error": "connection refused",
        },
    }
    ovs = {"version": "3.1.0", "run_dir": "/run/x", "bridge": "br-int", "flows": 3, "groups": 0}
    text = format_status(
        {"health": health, "ovs": ovs, "agent": {"socket": "s"}, "containers": []}
    )
    line = next(x for x in text.splitlines() if x.startswith("cluster"))
    assert "NOT connected to http://192.0.2.11:10110 as w1" in line
    assert "2 reports waiting" in line and "connection refused" in line
    offline = format_status(
        {
            "health": {**health, "cluster": None},
            "ovs": ovs,
            "agent": {"socket": "s"},
            "containers": [],
        }
    )
    assert not [x for x in offline.splitlines() if x.startswith("cluster")]
