"""ovs_setup on real OVS daemons in namespaces: nodes, bridges, container ports, tunnels, BFD."""

from __future__ import annotations

import json
import os
import time

import pytest
import testbed as tb_lib

from ovs_setup import bridge, container
from ovs_setup.netns import iproute
from ovs_setup.node import NodeOvs, process_alive

pytestmark = pytest.mark.dataplane


def vsctl(node, *args: str) -> str:
    """Read OVSDB the way an operator would (the code under test writes it via ovsdbapp)."""
    proc = tb_lib.procs.run(None, ["ovs-vsctl", f"--db={node.db_url}", *args])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def links(netns: str) -> dict[str, dict]:
    """Return ``ip -j -d addr`` of a namespace by interface name."""
    out = tb_lib.procs.run(netns, ["ip", "-j", "-d", "addr"]).stdout
    return {item["ifname"]: item for item in json.loads(out)}


def wait_for(predicate, timeout: float, step: float = 0.05):
    """Poll ``predicate`` until it returns a true value or ``timeout`` passes; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def test_two_nodes_start_stop_twice_without_collisions(testbed):
    nodes = []
    for name in ("n1", "n2"):
        ns = testbed.add_namespace(name)
        nodes.append(NodeOvs(os.path.join(testbed.base_dir, name), name=name, netns=ns))

    for _ in range(2):
        for node in nodes:
            node.start()
            node.start()  # idempotent: nothing new started
        pids = {(n.pid("ovsdb-server"), n.pid("ovs-vswitchd")) for n in nodes}
        assert len(pids) == 2 and all(all(p) for p in pids)
        for node in nodes:
            assert "Open vSwitch" in node.appctl("version")
            bridge.ensure_integration_bridge(node.db_url, datapath_type=node.datapath_type)
            assert os.path.exists(node.mgmt_url("br-int")[len("unix:") :])
        # Each node's bridge lives in its own namespace and its own database.
        for node in nodes:
            assert vsctl(node, "list-br") == "br-int"
            assert "br-int" in links(node.netns)
        n1_db, n2_db = nodes[0].db_url, nodes[1].db_url
        first = bridge.ensure_tunnel(n1_db, "br-int", "vx-only-n1", "192.0.2.99", bfd=False)
        assert "vx-only-n1" not in bridge.list_ports(n2_db, "br-int")
        # Re-pointing an existing tunnel keeps its number.
        assert bridge.ensure_tunnel(n1_db, "br-int", "vx-only-n1", "192.0.2.98") == first
        assert bridge.list_ports(n1_db, "br-int")["vx-only-n1"]["options"] == {
            "remote_ip": "192.0.2.98",
            "key": "flow",
        }
        bridge.remove_port(n1_db, "br-int", "vx-only-n1")
        bridge.remove_port(n1_db, "br-int", "vx-only-n1")
        assert bridge.port_ofport(n1_db, "vx-only-n1") is None

        old = [(n.pid("ovsdb-server"), n.pid("ovs-vswitchd")) for n in nodes]
        for node in nodes:
            node.stop()
            node.stop()  # idempotent
        for node, pid_pair in zip(nodes, old):
            assert not node.is_running()
            assert not any(process_alive(pid) for pid in pid_pair)
            assert set(links(node.netns)) == {"lo"}  # no tap devices left behind
            left = [f for f in os.listdir(node.run_dir) if f.endswith((".ctl", ".pid", ".mgmt"))]
            assert left == []


def test_integration_bridge_is_configured_once_and_keeps_flows(two_workers):
    w1, _ = two_workers
    row = vsctl(
        w1.ovs,
        "--format=json",
        "--columns=fail_mode,protocols,other_config,datapath_type",
        "list",
        "Bridge",
        "br-int",
    )
    assert '"secure"' in row and "OpenFlow15" in row and "disable-in-band" in row
    assert vsctl(w1.ovs, "get", "Controller", "br-int", "connection_mode") == "out-of-band"
    assert vsctl(w1.ovs, "get-controller", "br-int") == "tcp:127.0.0.1:6653"

    w1.ofctl("add-flow", "table=0,priority=5,cookie=0x77,actions=drop")
    bridge.ensure_integration_bridge(w1.db_url, datapath_type=w1.ovs.datapath_type)
    bridge.ensure_integration_bridge(
        w1.db_url,
        controller="tcp:127.0.0.1:6653",
        datapath_type=w1.ovs.datapath_type,
        bridge_mac="02:00:00:00:00:aa",
    )
    assert any("cookie=0x77" in f for f in w1.dump_flows())  # never flushed
    assert vsctl(w1.ovs, "get", "Bridge", "br-int", "other_config:hwaddr") == '"02:00:00:00:00:aa"'


def test_attach_configures_container_and_detach_removes_it(testbed):
    (w1,) = testbed.add_workers(1)
    c1 = testbed.add_container(w1, "c1")
    own_netns = os.stat("/proc/thread-self/ns/net").st_ino
    port = container.attach_container(
        w1.db_url,
        "br-int",
        c1.path,
        "vc1",
        "10.16.0.2/26",
        "fd00:16::2/64",
        "10.16.0.1",
        "fd00:16::1",
        1450,
        ofport=21,
        external_ids={"oaknet:service": "app.ns.svc.ns", "oaknet:instance": 0},
        node_netns=w1.netns,
    )

    assert os.stat("/proc/thread-self/ns/net").st_ino == own_netns  # the caller never moved
    assert port.port_name == "vc1" and port.ofport == 21
    assert port.namespace_ip == "10.16.0.2" and port.namespace_ip_v6 == "fd00:16::2"
    inside = links(c1.netns)
    eth0 = inside["eth0"]
    assert eth0["address"] == port.mac and eth0["mtu"] == 1450 and "UP" in eth0["flags"]
    assert "UP" in inside["lo"]["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in eth0["addr_info"]}
    assert {("10.16.0.2", 26), ("fd00:16::2", 64)} <= addrs
    routes = tb_lib.procs.run(c1.netns, ["ip", "route"]).stdout
    assert "default via 10.16.0.1 dev eth0" in routes and "onlink" in routes
    assert (
        "default via fd00:16::1 dev eth0"
        in tb_lib.procs.run(c1.netns, ["ip", "-6", "route"]).stdout
    )
    dad = tb_lib.procs.run(c1.netns, ["sysctl", "-n", "net.ipv6.conf.eth0.accept_dad"])
    assert dad.stdout.strip() == "0"
    for ns, dev in ((c1.netns, "eth0"), (w1.netns, "vc1")):
        features = tb_lib.procs.run(ns, ["ethtool", "-k", dev]).stdout
        assert "tx-checksumming: off" in features, (ns, dev)
    assert links(w1.netns)["vc1"]["mtu"] == 1450

    listed = bridge.list_ports(w1.db_url, "br-int")["vc1"]
    assert listed["ofport"] == 21
    assert listed["external_ids"] == {"oaknet:service": "app.ns.svc.ns", "oaknet:instance": "0"}
    assert bridge.port_ofport(w1.db_url, "vc1") == 21
    assert "vc1" in w1.ofctl("dump-ports-desc")

    container.detach_container(w1.db_url, "br-int", "vc1", node_netns=w1.netns)
    container.detach_container(w1.db_url, "br-int", "vc1", node_netns=w1.netns)
    assert "vc1" not in links(w1.netns)
    assert set(links(c1.netns)) == {"lo"}
    assert "vc1" not in bridge.list_ports(w1.db_url, "br-int")
    assert bridge.port_ofport(w1.db_url, "vc1") is None


def test_attach_by_pid_and_failed_attach_leaves_nothing(testbed):
    (w1,) = testbed.add_workers(1)
    c1 = testbed.add_container(w1, "c1")
    sleeper = testbed.run_in(c1, ["sleep", "60"], background=True)
    port = container.attach_container(
        w1.db_url,
        "br-int",
        sleeper.pid,
        "vpid",
        "10.16.0.5/26",
        None,
        "10.16.0.1",
        None,
        1450,
        node_netns=w1.netns,
    )
    assert "eth0" in links(c1.netns) and port.namespace_ip == "10.16.0.5"
    before_links = set(links(w1.netns))
    before_ports = set(bridge.list_ports(w1.db_url, "br-int"))

    other = testbed.add_container(w1, "c2")
    with iproute(other.netns) as ipr:  # an eth0 already there: fails after the veth exists
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "other0"})
    missing_pid = 2**22 + 1
    bad = [
        (testbed.prefix + "-nosuchns", "cannot open"),
        ("/run/netns/" + testbed.prefix + "-nosuchns", "cannot open"),
        (missing_pid, "cannot open"),
        ("/etc/hostname", "not a namespace"),
        ("/proc/self/ns/mnt", "not a network namespace"),
        (other.path, "eth0 exists"),
    ]
    for netns, reason in bad:
        with pytest.raises(container.AttachError, match=reason):
            container.attach_container(
                w1.db_url,
                "br-int",
                netns,
                "vbad",
                "10.16.0.9/26",
                None,
                "10.16.0.1",
                None,
                1450,
                node_netns=w1.netns,
            )
        assert set(links(w1.netns)) == before_links, netns
        assert set(bridge.list_ports(w1.db_url, "br-int")) == before_ports, netns
    assert not os.path.exists("/run/netns/" + testbed.prefix + "-nosuchns")
    assert set(links(other.netns)) == {"lo", "eth0", "other0"}  # its own eth0 untouched

    with pytest.raises(container.AttachError, match="exists"):  # the same name twice
        container.attach_container(
            w1.db_url,
            "br-int",
            other.path,
            "vpid",
            "10.16.0.6/26",
            None,
            "10.16.0.1",
            None,
            1450,
            node_netns=w1.netns,
        )
    fresh = testbed.add_container(w1, "c3")
    with pytest.raises(container.AttachError, match=f"ofport: {port.ofport} is taken"):
        container.attach_container(
            w1.db_url,
            "br-int",
            fresh.path,
            "vx",
            "10.16.0.6/26",
            None,
            "10.16.0.1",
            None,
            1450,
            ofport=port.ofport,
            node_netns=w1.netns,
        )
    with pytest.raises(container.AttachError, match="gateway_v4"):
        container.attach_container(
            w1.db_url,
            "br-int",
            other.path,
            "vx",
            "10.16.0.6/26",
            None,
            "fd00::1",
            None,
            1450,
            node_netns=w1.netns,
        )
    assert set(links(w1.netns)) == before_links


def test_container_mtu_leaves_room_for_the_tunnel():
    assert container.container_mtu(1500) == 1450
    assert container.container_mtu(1500, ipv6_underlay=True) == 1430
    assert container.container_mtu(1500, kind="geneve") == 1450
    assert container.container_mtu(9000, kind="gre") == 8958
    with pytest.raises(ValueError, match="kind"):
        container.container_mtu(1500, kind="stt")


def test_two_containers_talk_through_static_flows(testbed):
    (w1,) = testbed.add_workers(1)
    c1, c2 = testbed.add_container(w1, "c1"), testbed.add_container(w1, "c2")
    p1 = testbed.attach(c1, "10.16.0.2/26", "fd00:16::2/64")
    p2 = testbed.attach(c2, "10.16.0.3/26", "fd00:16::3/64")
    # Just enough to prove the links: an L2 switch (the real pipeline lives in sdn/).
    w1.ofctl("add-flow", "table=0,priority=0,actions=NORMAL")

    assert tb_lib.ping(c1.netns, "10.16.0.3", count=2).received == 2
    assert tb_lib.ping(c1.netns, "fd00:16::3", count=2).received == 2
    testbed.start_http_server(c2, "c2")
    for url in ("http://10.16.0.3/info", "http://[fd00:16::3]/info"):
        got = tb_lib.http_get(c1.netns, url)
        assert got["status"] == 200, got
        info = json.loads(got["body"])
        assert info["name"] == "c2" and info["client"][0] in (p1.namespace_ip, p1.namespace_ip_v6)
    testbed.start_iperf3(c2)
    result = tb_lib.iperf3(c1.netns, p2.namespace_ip, nbytes=20_000_000)
    assert result["error"] is None and result["sent_bytes"] >= 20_000_000, result


def test_tunnels_with_bfd_carry_traffic_and_follow_the_peer(two_workers, testbed):
    w1, w2 = two_workers
    start = time.monotonic()
    of1 = bridge.ensure_tunnel(w1.db_url, "br-int", "vx-w2", w2.ip4, ofport=100)
    of2 = bridge.ensure_tunnel(w2.db_url, "br-int", "vx-w1", w1.ip4, ofport=100)
    assert of1 == of2 == 100

    def both_up():
        return all(
            bridge.bfd_status(w.db_url, p)["forwarding"] for w, p in ((w1, "vx-w2"), (w2, "vx-w1"))
        )

    assert wait_for(both_up, 5), bridge.bfd_status(w1.db_url, "vx-w2")
    up_after = time.monotonic() - start
    assert up_after < 5
    status = wait_for(
        lambda: (s := bridge.bfd_status(w1.db_url, "vx-w2"))["remote_state"] == "up" and s, 2
    )
    assert status and status["state"] == "up" and status["enabled"]
    assert "Forwarding: true" in w1.ovs.appctl("bfd/show", "vx-w2")
    flaps = status["flap_count"]
    assert bridge.ensure_tunnel(w1.db_url, "br-int", "vx-w2", w2.ip4, ofport=100) == 100
    assert bridge.bfd_status(w1.db_url, "vx-w2")["flap_count"] == flaps  # no change, no flap
    assert bridge.list_ports(w1.db_url, "br-int")["vx-w2"]["options"]["remote_ip"] == w2.ip4

    # Containers on both nodes, one L2 segment over VXLAN: MTU and offloads must be right.
    c1, c2 = testbed.add_container(w1, "c1"), testbed.add_container(w2, "c2")
    mtu = container.container_mtu(1500)
    p1 = testbed.attach(c1, "10.16.0.2/24", mtu=mtu)
    p2 = testbed.attach(c2, "10.16.0.3/24", mtu=mtu)
    for worker in (w1, w2):
        worker.ofctl("add-flow", "table=0,priority=0,actions=NORMAL")
    assert tb_lib.ping(c1.netns, p2.namespace_ip, count=2).received == 2
    testbed.start_http_server(c2, "c2")
    got = tb_lib.http_get(c1.netns, f"http://{p2.namespace_ip}/info")
    assert got["status"] == 200 and json.loads(got["body"])["client"][0] == p1.namespace_ip
    testbed.start_iperf3(c2)
    result = tb_lib.iperf3(c1.netns, p2.namespace_ip, nbytes=10_000_000)
    assert result["error"] is None and result["sent_bytes"] >= 10_000_000, result

    # Peer lost: BFD notices within a few hundred ms; back: up again.
    def set_uplink(worker, state):
        with iproute(worker.netns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="ul0")[0], state=state)

    set_uplink(w2, "down")
    lost = time.monotonic()
    assert wait_for(lambda: not bridge.bfd_status(w1.db_url, "vx-w2")["forwarding"], 3)
    down_after = time.monotonic() - lost
    set_uplink(w2, "up")
    back = time.monotonic()
    assert wait_for(both_up, 5)
    print(
        f"bfd up {up_after:.2f}s, down detected {down_after:.2f}s, "
        f"up again {time.monotonic() - back:.2f}s"
    )
    assert down_after < 1.5


def test_flow_tunnel_coexists_with_per_peer_ports(testbed):
    w1, w2, w3 = testbed.add_workers(3, ipv6=False)
    bridge.ensure_tunnel(w1.db_url, "br-int", "vx-w2", w2.ip4, ofport=100)
    bridge.ensure_tunnel(w2.db_url, "br-int", "vx-w1", w1.ip4, ofport=100)
    flow_port = bridge.ensure_flow_tunnel(w2.db_url, "br-int", "vx-any", ofport=199)
    assert bridge.ensure_flow_tunnel(w2.db_url, "br-int", "vx-any", ofport=199) == 199
    bridge.ensure_tunnel(w3.db_url, "br-int", "vx-w2", w2.ip4, ofport=100, bfd=False)
    assert bridge.list_ports(w2.db_url, "br-int")["vx-any"]["options"]["remote_ip"] == "flow"

    assert wait_for(lambda: bridge.bfd_status(w2.db_url, "vx-w1")["forwarding"], 5)
    assert bridge.bfd_status(w2.db_url, "vx-any")["enabled"] is False
    for port in (100, 199):
        for key in (1, 3):
            w2.ofctl("add-flow", f"table=0,priority=10,in_port={port},tun_id={key},actions=drop")
    frame = "ffffffffffff" + "020000000001" + "0806" + "00" * 28

    def send_and_count():
        # Each sender marks its frames with its own VNI; the first frames may be lost while
        # the sender's OVS resolves the peer's MAC.
        for worker, key in ((w1, 1), (w3, 3)):
            worker.ofctl("packet-out", "controller", f"set_field:{key}->tun_id,output:100", frame)
        flows = w2.ofctl("dump-flows", "table=0", "--no-names")
        seen = {}
        for line in flows.splitlines():
            if "tun_id=" in line:
                match = line.split("tun_id=")[1].split(",")[0].split(" ")[0]
                port = int(line.split("in_port=")[1].split(" ")[0].split(",")[0])
                seen[(port, int(match, 16))] = int(line.split("n_packets=")[1].split(",")[0])
        return seen if seen[(100, 1)] and seen[(199, 3)] else None

    seen = wait_for(send_and_count, 3, step=0.2)
    # From w1 (which has its own port on w2): on vx-w1; from w3 (no own port): on vx-any.
    assert seen, w2.ofctl("dump-flows", "table=0")
    assert seen[(199, 1)] == 0 and seen[(100, 3)] == 0, seen
    assert flow_port == 199
