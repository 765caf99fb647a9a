"""Cluster mode's parts without a switch or a network (marker ``unit``): config, resolver,
outbox, tunnel planning, interest expiry."""

from __future__ import annotations

import ipaddress
import struct
import threading
import time

import pytest

from oaknet.auth import issue_jwt
from oaknet.client import ClientError, Unavailable
from oaknet.model import Instance, Service
from sdn import config
from sdn.cluster_table import placed_only
from sdn.expiry import IdleWatch
from sdn.outbox import Outbox, Report
from sdn.resolver import Resolver, destination
from sdn.spec import owner_id, service_owner
from sdn.tunnels import PLANNED_OFPORT_BASE, Tunnels

pytestmark = pytest.mark.unit

BASE = {"node_ip": "192.0.2.7", "cluster_url": "http://192.0.2.100:10110"}


def test_cluster_config_node_id_from_the_token_and_env(tmp_path):
    (tmp_path / "node.jwt").write_text(issue_jwt("k" * 40, "w7", ["node"]) + "\n")
    (tmp_path / "agent.yaml").write_text(
        "node_ip: 192.0.2.7\ncluster_url: http://192.0.2.100:10110\nnode_token_file: node.jwt\n"
    )
    env = {"OAKNET_PEERS": "192.0.2.8,192.0.2.9", "OAKNET_NEGATIVE_CACHE_S": "2.5"}
    cfg = config.load(str(tmp_path / "agent.yaml"), env=env)
    assert (cfg.node_id, cfg.node_name, cfg.cluster_mode) == ("w7", "w7", True)
    assert cfg.node_token_file == str(tmp_path / "node.jwt")
    assert cfg.peers == ("192.0.2.8", "192.0.2.9") and cfg.negative_cache_s == 2.5
    assert cfg.subnet_v4 is None and cfg.reported_host_port == 4789
    full = cfg.with_subnets("10.18.0.64/26", "fc00::100/120")
    assert full.gateway_v4 == "10.18.0.65" and full.gateway_mac


@pytest.mark.parametrize(
    "extra, word",
    [
        ({"node_token": "t", "node_id": "w1", "subnet_v4": "10.18.0.0/26"}, "subnet_v4"),
        ({"node_id": "w1"}, "node_token"),
        ({"node_token": "static"}, "node_id"),
        ({"node_token": "t", "node_id": "w1", "cluster_url": "ftp://x"}, "cluster_url"),
        ({"node_token": "t", "node_id": "w1", "interest_idle_s": 0}, "interest_idle_s"),
    ],
)
def test_cluster_config_errors_name_the_key(extra, word):
    with pytest.raises(config.ConfigError, match=word):
        config.from_dict({**BASE, **extra})


def test_offline_config_refuses_cluster_only_keys():
    data = {"node_name": "n", "node_ip": "192.0.2.1", "subnet_v4": "10.18.0.0/26"}
    with pytest.raises(config.ConfigError, match="node_id"):
        config.from_dict({**data, "node_id": "n"})


def _frame(dst: str) -> bytes:
    ip = ipaddress.ip_address(dst)
    if ip.version == 4:
        return bytes(12) + struct.pack("!H", 0x0800) + bytes(16) + ip.packed
    return bytes(12) + struct.pack("!H", 0x86DD) + bytes(24) + ip.packed


def test_destination_of_frames():
    assert destination(_frame("10.30.0.1")) == "10.30.0.1"
    assert destination(_frame("fdff::1")) == "fdff::1"
    assert destination(b"short") is None


class _Recorder:
    def __init__(self):
        self.reinjected, self.rejected = [], []
        self.done = threading.Event()

    def reinject(self, frame, port):
        self.reinjected.append(port)
        self.done.set()

    def reject(self, frame, port):
        self.rejected.append(port)
        self.done.set()


def test_resolver_one_lookup_per_address_and_a_negative_cache():
    release = threading.Event()
    calls = []

    def lookup(addr):
        calls.append(addr)
        release.wait(5)
        return addr == "10.30.0.1"

    rec = _Recorder()
    res = Resolver(lookup, rec.reinject, rec.reject, negative_s=30)
    for port in range(5):
        res.on_unknown(_frame("10.30.0.1"), port)
    release.set()
    deadline = time.monotonic() + 5
    while len(rec.reinjected) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == ["10.30.0.1"] and sorted(rec.reinjected) == [0, 1, 2, 3, 4]

    res.on_unknown(_frame("10.30.9.9"), 7)
    while not rec.rejected and time.monotonic() < deadline:
        time.sleep(0.01)
    res.on_unknown(_frame("10.30.9.9"), 8)  # negative: refused without asking
    assert rec.rejected == [7, 8] and calls.count("10.30.9.9") == 1
    assert res.status()["negative"] == 1
    res.close()


def test_outbox_keeps_order_retries_and_drops_refused_reports():
    sent, failures = [], []
    answers = {
        "a": [Unavailable("down"), None],
        "b": [ClientError("POST", "/x", 409, "conflict", "no")],
        "c": [None],
    }

    def send(report):
        outcome = answers[report.body["k"]].pop(0)
        if outcome is not None:
            raise outcome
        sent.append(report.body["k"])

    box = Outbox([], send, lambda op, exc: failures.append(op), lambda: None, retry_s=0.01)
    reports = [box.put(Report("deployed", {"k": k})) for k in "abc"]
    box.start()
    assert all(r.done.wait(5) for r in reports)
    box.stop()
    assert sent == ["a", "c"] and failures == ["deployed"] and len(box) == 0


def test_placed_only_clears_the_node_of_instances_that_run_nowhere():
    svc = Service(
        "a.b.c.d",
        instances=[
            Instance(0, "10.30.0.5", node_ip="192.0.2.2", namespace_ip="10.18.0.66"),
            Instance(1, "10.30.0.6", node_ip="192.0.2.3"),  # stopped or not yet reported
        ],
    )
    assert [i.node_ip for i in placed_only(svc).instances] == ["192.0.2.2", None]


class _Ops:
    def __init__(self, ports=None, forwarding=False):
        self.ports = ports or {}
        self.forwarding = forwarding
        self.made, self.removed = {}, []

    def tunnel_ofports(self):
        return dict(self.ports)

    def ensure_tunnel(self, ip, ofport=None):
        self.made[ip] = ofport
        return ofport

    def remove_tunnel(self, ip):
        self.removed.append(ip)

    def announce(self):
        """Nothing to announce."""

    def warm_neighbors(self, ips):
        return []

    def bfd(self, ip):
        return {"forwarding": self.forwarding}


def test_tunnels_planned_before_made_and_learning_held_after_removal(monkeypatch):
    ops = _Ops(ports={"192.0.2.9": 5})
    tunnels = Tunnels(ops, "192.0.2.1", (), dynamic=True)
    nodes = ("192.0.2.2", "192.0.2.9")
    svc = Service("a.b.c.d", instances=[Instance(n, node_ip=ip) for n, ip in enumerate(nodes)])
    planned = tunnels.prepare([svc])
    assert planned["192.0.2.9"].ofport == 5  # an existing port keeps its number
    assert planned["192.0.2.2"].ofport >= PLANNED_OFPORT_BASE and ops.made == {}
    added, removed = tunnels.follow(planned, {svc.name: None}, {svc.name: svc})
    assert added == ["192.0.2.2", "192.0.2.9"] and removed == []
    assert tunnels.create(planned) == ([], {}) and set(ops.made) == set(added)

    added, removed = tunnels.follow({}, {svc.name: svc}, {})
    assert removed == ["192.0.2.2", "192.0.2.9"] and tunnels.peers == {}
    assert tunnels.learn("192.0.2.2") == {}  # held: it was removed for lack of services
    learned = tunnels.learn("192.0.2.7")
    assert list(learned) == ["192.0.2.7"] and "192.0.2.7" in tunnels.learned

    clock = [time.monotonic() + 100]
    monkeypatch.setattr("sdn.tunnels.time.monotonic", lambda: clock[0])
    assert tunnels.stale_learned(ops.bfd) == []  # down: the clock starts
    clock[0] += 11
    assert tunnels.stale_learned(ops.bfd) == ["192.0.2.7"] and tunnels.peers == {}


def test_idle_watch_expires_only_services_whose_counters_stand_still():
    counts = {"a.b.c.d": {1: 5}, "e.f.g.h": {2: 5}}
    by_cookie = {owner_id(service_owner(n)) << 32: n for n in counts}
    expired = []

    class Switch:
        def flow_counts(self, cookie, mask):
            return dict(counts[by_cookie[cookie]])

    watch = IdleWatch(10, lambda: list(counts), expired.append)
    sw = Switch()
    assert watch.check(sw, now=0) == []
    counts["a.b.c.d"] = {1: 6}  # traffic
    assert watch.check(sw, now=8) == []
    assert watch.check(sw, now=12) == ["e.f.g.h"] and expired == ["e.f.g.h"]
    assert watch.check(sw, now=17) == []
    assert watch.check(sw, now=19) == ["a.b.c.d"]
