"""The namespace testbed: delays, servers and clients, and that it always cleans up after itself."""

from __future__ import annotations

import json
import os

import pytest
import testbed as tb_lib
from testbed import procs

from ovs_setup.netns import list_named
from ovs_setup.node import process_alive

pytestmark = pytest.mark.dataplane


def snapshot(tb: tb_lib.Testbed) -> dict:
    """Record what a testbed made: its namespaces, the processes in them, its directory."""
    names = [n for n in list_named() if n.startswith(tb.prefix + "-")]
    pids = sorted({pid for n in names for pid in procs.pids_in_netns(n)})
    return {"netns": names, "pids": pids, "dir": tb.base_dir}


def assert_gone(made: dict, prefix: str) -> None:
    """Nothing of a testbed is left: no namespace, no process, no directory."""
    assert [n for n in list_named() if n.startswith(prefix + "-")] == []
    assert [pid for pid in made["pids"] if process_alive(pid)] == []
    assert not os.path.exists(made["dir"])


def build_some(tb: tb_lib.Testbed) -> None:
    """A bit of everything: a worker with a container and servers, a host, a delay."""
    worker = tb.add_worker("w1", "192.0.2.1", "2001:db8::1")
    host = tb.add_host("m", "192.0.2.10")
    c1 = tb.add_container(worker, "c1")
    tb.attach(c1, "10.16.0.2/26")
    tb.start_http_server(c1, "c1")
    tb.start_udp_echo(host, "m")
    tb.set_delay(worker, host, 1)


def test_teardown_removes_everything_also_after_an_exception(tb_prefix):
    with tb_lib.Testbed(tb_prefix) as tb:
        build_some(tb)
        made = snapshot(tb)
    assert len(made["netns"]) == 4 and len(made["pids"]) >= 5  # 2 OVS, 2 servers, delay line
    assert_gone(made, tb_prefix)

    with pytest.raises(RuntimeError, match="boom"), tb_lib.Testbed(tb_prefix) as tb:
        build_some(tb)
        made = snapshot(tb)
        raise RuntimeError("boom")
    assert_gone(made, tb_prefix)


def test_failed_setup_leaves_nothing(tb_prefix, monkeypatch):
    made = {}

    def broken_bridge(*args, **kwargs):
        made.update(snapshot(tb))  # OVS runs by now
        raise RuntimeError("bridge failed")

    monkeypatch.setattr(tb_lib.core.ovs_bridge, "ensure_integration_bridge", broken_bridge)
    with pytest.raises(RuntimeError, match="bridge failed"), tb_lib.Testbed(tb_prefix) as tb:
        tb.add_worker("w1", "192.0.2.1")
    assert made["pids"], "the worker's OVS should have been running"
    assert_gone(made, tb_prefix)

    with pytest.raises(tb_lib.TestbedError, match="prefix"):
        tb_lib.Testbed("Bad-Prefix")
    with tb_lib.Testbed(tb_prefix) as tb:
        with pytest.raises(tb_lib.TestbedError, match="name"):
            tb.add_host("no_underscores", "192.0.2.5")
        with pytest.raises(tb_lib.TestbedError, match="IPv4"):
            tb.add_host("h1", "2001:db8::5")
        made = snapshot(tb)
    assert_gone(made, tb_prefix)


def test_cleanup_removes_leftovers_of_a_crashed_run(tb_prefix):
    crashed = tb_lib.Testbed(tb_prefix)
    crashed.__enter__()  # built, then abandoned without teardown (as if its process died)
    build_some(crashed)
    made = snapshot(crashed)
    orphans = list(crashed._procs) + [crashed._delays.proc]

    with pytest.raises(tb_lib.TestbedError, match="leftovers"):
        tb_lib.Testbed(tb_prefix).__enter__()
    removed = tb_lib.cleanup(tb_prefix)
    for proc in orphans:
        proc.wait(5)  # they were our children: reap them
    assert "ovs:w1" in removed and f"netns:{tb_prefix}-ul" in removed
    assert_gone(made, tb_prefix)
    assert tb_lib.cleanup(tb_prefix) == []


def test_delays_show_in_ping_and_only_between_their_hosts(testbed):
    a = testbed.add_host("a", "192.0.2.21", "2001:db8::21")
    b = testbed.add_host("b", "192.0.2.22", "2001:db8::22")
    c = testbed.add_host("c", "192.0.2.23", "2001:db8::23")
    assert tb_lib.ping(a.netns, b.ip4).avg < 5

    testbed.set_delay(a, b, 20)
    testbed.set_delay("a", "c", 2)
    to_b, to_b6 = tb_lib.ping(a.netns, b.ip4), tb_lib.ping(a.netns, b.ip6)
    to_c, b_to_c = tb_lib.ping(a.netns, c.ip4), tb_lib.ping(b.netns, c.ip4)
    print(
        f"RTT a-b {to_b.avg:.1f} ms (v6 {to_b6.avg:.1f}), a-c {to_c.avg:.1f}, b-c {b_to_c.avg:.1f}"
    )
    assert 40 <= to_b.avg < 60 and 40 <= to_b6.avg < 60
    assert 4 <= to_c.avg < 15
    assert b_to_c.avg < 4
    assert to_b.received == to_b.transmitted

    testbed.set_delay(a, b, 10, both_ways=False)  # a->b 10 ms, b->a stays at 20 ms
    assert 30 <= tb_lib.ping(a.netns, b.ip4).avg < 45
    testbed.set_delay(a, b, 0)
    assert tb_lib.ping(a.netns, b.ip4).avg < 5


def test_delay_between_workers_applies_to_tunnelled_traffic(two_workers, testbed):
    from ovs_setup import bridge

    w1, w2 = two_workers
    bridge.ensure_tunnel(w1.db_url, "br-int", "vx-w2", w2.ip4, ofport=100, bfd=False)
    bridge.ensure_tunnel(w2.db_url, "br-int", "vx-w1", w1.ip4, ofport=100, bfd=False)
    c1, c2 = testbed.add_container(w1, "c1"), testbed.add_container(w2, "c2")
    testbed.attach(c1, "10.16.0.2/24")
    testbed.attach(c2, "10.16.0.3/24")
    for worker in (w1, w2):
        worker.ofctl("add-flow", "table=0,priority=0,actions=NORMAL")
    assert tb_lib.ping(c1.netns, "10.16.0.3").received == 3
    testbed.set_delay(w1, w2, 15)
    assert 30 <= tb_lib.ping(c1.netns, "10.16.0.3").avg < 50


def test_servers_and_clients_report_what_they_saw(testbed):
    a = testbed.add_host("a", "192.0.2.31", "2001:db8::31")
    b = testbed.add_host("b", "192.0.2.32", "2001:db8::32")
    testbed.start_http_server(b, "srv-b", port=8080)
    testbed.start_udp_echo(b, "echo-b", port=9999)
    testbed.start_iperf3(b)

    got = tb_lib.http_get(a.netns, f"http://[{b.ip6}]:8080/info")
    assert got["status"] == 200 and got["peer"] == [b.ip6, 8080]
    assert json.loads(got["body"])["client"] == got["local"]
    assert tb_lib.http_get(a.netns, f"http://{b.ip4}:8080/")["body"] == "srv-b"
    refused = tb_lib.http_get(a.netns, f"http://{b.ip4}:8081/", timeout=2)
    assert refused["status"] is None and "ConnectionRefused" in refused["error"]

    echo = tb_lib.udp_send(a.netns, b.ip4, 9999, "hello", source_port=40000)
    assert echo["reply"] == {"name": "echo-b", "client": [a.ip4, 40000], "echo": "hello"}
    assert echo["peer"] == [b.ip4, 9999]
    lost = tb_lib.udp_send(a.netns, b.ip4, 9998, "x", timeout=0.5)
    assert lost["reply"] is None and lost["error"]

    result = tb_lib.iperf3(a.netns, b.ip4, seconds=1)
    assert result["error"] is None and result["bits_per_second"] > 1e8

    proc = testbed.run_in(a, ["sleep", "30"], background=True)
    assert proc.pid in procs.pids_in_netns(a.netns)
    testbed.stop_process(proc)
    assert not process_alive(proc.pid)
    assert testbed.run_in(a, ["cat", "/proc/net/dev"]).stdout.count("ul0") == 1
