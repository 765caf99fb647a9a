"""The rtnetlink client and thread-based namespace calls, on namespaces made by the test."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import threading

import pytest
import testbed as tb_lib

from ovs_setup.netns import NetnsError, call_in_netns, write_sysctl
from ovs_setup.rtnl import Rtnl, RtnlError

pytestmark = pytest.mark.dataplane


def ip_json(netns: str, *args: str) -> list[dict]:
    """``ip -j ARGS`` inside a namespace, parsed."""
    proc = tb_lib.procs.run(netns, ["ip", "-j", *args])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


def thread_netns() -> tuple[int, int]:
    """The (device, inode) of the calling thread's network namespace."""
    st = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net")
    return st.st_dev, st.st_ino


def test_call_in_netns_runs_there_and_leaves_the_caller_where_it_was(testbed):
    ns = testbed.add_namespace("a")
    target = os.stat(f"/run/netns/{ns}")
    before = thread_netns()

    assert call_in_netns(ns, thread_netns) == (target.st_dev, target.st_ino)
    assert thread_netns() == before
    with pytest.raises(ZeroDivisionError):
        call_in_netns(ns, lambda: 1 / 0)
    assert thread_netns() == before
    with pytest.raises(NetnsError, match="cannot open"):
        call_in_netns(testbed.prefix + "-missing", thread_netns)
    assert not os.path.exists(f"/run/netns/{testbed.prefix}-missing")

    # /proc/sys/net is the namespace of the thread that opens it.
    write_sysctl(ns, "net/ipv4/ip_forward", "1")
    got = tb_lib.procs.run(ns, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
    assert got == "1"


def test_veth_into_another_namespace_with_addresses_and_routes(testbed):
    node, box = testbed.add_namespace("node"), testbed.add_namespace("box")
    fd = os.open(f"/run/netns/{box}", os.O_RDONLY)
    try:
        with Rtnl.open(node) as host:
            host.add_veth(
                "okv0", "eth0", 1400, peer_mac="02:00:00:00:00:07", peer_netns_fd=fd, up=True
            )
            assert host.link_index("okv0") is not None
            assert host.link_index("eth0") is None  # the peer is only in the other namespace
            with pytest.raises(RtnlError) as again:
                host.add_veth("okv0", "eth1", 1400)
    finally:
        os.close(fd)
    assert again.value.errno == errno.EEXIST and "creating veth okv0/eth1" in str(again.value)

    with Rtnl.open(box) as inside:
        link = inside.link("eth0")
        assert link is not None and link.mac == "02:00:00:00:00:07"
        inside.add_address(link.index, ipaddress.ip_interface("10.16.0.2/26"))
        inside.add_address(link.index, ipaddress.ip_interface("fd00:16::2/64"), nodad=True)
        inside.set_link(link.index, up=True)
        inside.add_default_route(link.index, ipaddress.ip_address("10.16.0.1"))
        inside.add_default_route(link.index, ipaddress.ip_address("fd00:16::1"))
        with pytest.raises(RtnlError) as missing:
            inside.set_link(9999, up=True)
        assert missing.value.errno == errno.ENODEV
        with pytest.raises(RtnlError) as twice:
            inside.add_address(link.index, ipaddress.ip_interface("10.16.0.2/26"))
        assert twice.value.errno == errno.EEXIST

    (eth0,) = ip_json(box, "addr", "show", "eth0")
    assert eth0["mtu"] == 1400 and "UP" in eth0["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in eth0["addr_info"]}
    assert {("10.16.0.2", 26), ("fd00:16::2", 64)} <= addrs
    v6 = next(a for a in eth0["addr_info"] if a["local"] == "fd00:16::2")
    assert v6.get("nodad") is True
    for family, gateway in (("-4", "10.16.0.1"), ("-6", "fd00:16::1")):
        (route,) = [r for r in ip_json(box, family, "route", "show", "default")]
        assert route["gateway"] == gateway and route["dev"] == "eth0"
        assert "onlink" in route["flags"]
    (host_end,) = ip_json(node, "link", "show", "okv0")
    assert host_end["mtu"] == 1400 and "UP" in host_end["flags"]

    with Rtnl.open(node) as host:
        assert host.delete_link("okv0") is True
        assert host.delete_link("okv0") is False
    assert [x["ifname"] for x in ip_json(box, "link")] == ["lo"]  # the peer went with it
