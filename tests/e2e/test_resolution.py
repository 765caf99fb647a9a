"""On-demand resolution in cluster mode: first packet, negative cache, one query, expiry.

Root and cluster manager in host ``mgr``, three workers with agents in cluster mode (short
negative cache and interest expiry). Services live on w2 and w3; the client on w1 has never
heard of them. The tests run in file order.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import sys
from pathlib import Path

import pytest
import testbed as tb_lib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataplane"))

from agent_support import http_many
from test_agent_cluster_support import (
    Managers,
    cluster_agent,
    service_ips,
    start_cluster_agents,
    wait_for,
)

from oaknet.auth import NODE, issue_jwt

pytestmark = pytest.mark.e2e

API, API_ID = "shop.prod.api.default", "api"
DB, DB_ID = "shop.prod.db.default", "db"
CLIENT, CLIENT_ID = "shop.prod.client.default", "client"
QUERY_BY_IP = "/api/net/node/service/ip/<service_ip>/instances"
NEGATIVE_S = 3.0
IDLE_S = 4.0

# Connects to HOST:PORT N times (in parallel threads when asked); prints each outcome and
# how long connect() took.
_CONNECT = r"""
import json, socket, sys, threading, time
host, port, count, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
out = [None] * count
def one(i):
    start = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(b"GET /info HTTP/1.0\r\n\r\n")
        body = b""
        while True:
            data = s.recv(4096)
            if not data:
                break
            body += data
        s.close()
        out[i] = {"ok": True, "seconds": time.monotonic() - start,
                  "name": json.loads(body.split(b"\r\n\r\n", 1)[1])["name"]}
    except OSError as exc:
        out[i] = {"ok": False, "seconds": time.monotonic() - start, "error": type(exc).__name__}
threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
    if not parallel:
        t.join()
for t in threads:
    t.join()
print(json.dumps(out))
"""


def connect(tb, netns: str, host: str, count: int = 1, parallel: bool = False) -> list[dict]:
    """Open ``count`` HTTP connections to ``host``:80 from ``netns``; their outcomes."""
    argv = [sys.executable, "-c", _CONNECT, host, "80", str(count), "1" if parallel else "0"]
    proc = tb.run_in(netns, argv, timeout=count * 4 + 10)
    return json.loads(proc.stdout)


class Bed:
    """Managers, three agents, the services and their containers."""

    def __init__(self, tb):
        self.tb = tb
        self.workers = tb.add_workers(3)
        self.mgrs = Managers(tb, [w.name for w in self.workers])
        self.agents = start_cluster_agents(
            tb, self.mgrs, self.workers, negative_cache_s=NEGATIVE_S, interest_idle_s=IDLE_S
        )
        self.a1, self.a2, self.a3 = self.agents
        self.ips = {}
        self.c = {}
        for job_id, name, worker, label in (
            (API_ID, API, "w2", "api-0"),
            (DB_ID, DB, "w3", "db-0"),
            (CLIENT_ID, CLIENT, "w1", "client-0"),
        ):
            self.ips[name] = service_ips(self.mgrs.deploy_service(job_id, name))
            self.mgrs.deploy_instance(job_id, 0, worker)
            agent = next(a for a in self.agents if a.worker.name == worker)
            cont = tb.add_container(agent.worker, label.replace("-", ""))
            agent.attach(cont, name, 0)
            tb.start_http_server(cont, label)
            self.c[name] = cont
        self.client_ns = self.c[CLIENT].netns

    def queries(self) -> int:
        """Table queries by IP the cluster manager has served so far."""
        return self.mgrs.cluster_requests(QUERY_BY_IP)


@pytest.fixture(scope="module")
def bed():
    missing = [t for t in ("ovs-vswitchd", "ovsdb-server", "ovs-ofctl") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (run scripts/install.sh)")
    for prefix in tb_lib.stale_prefixes():
        tb_lib.cleanup(prefix)
    with tb_lib.Testbed("okr" + secrets.token_hex(3)) as tb:
        bed = Bed(tb)
        try:
            yield bed
        finally:
            bed.mgrs.close()


def test_1_first_connection_to_a_never_seen_service_needs_no_retry(bed):
    """w2's agent is down meanwhile: w2 cannot learn w1, so the request must come in through
    w2's any-peer port and the answer go back by the address kept in the connection."""
    assert API not in bed.a1.services()
    bed.a2.stop()
    before = bed.queries()
    [got] = connect(bed.tb, bed.client_ns, bed.ips[API]["rr"])
    assert got["ok"] and got["name"] == "api-0", got
    # A lost first SYN would be retransmitted after 1 s.
    assert got["seconds"] < 0.5, got
    print(f"first connection to a never-seen service IP: {got['seconds'] * 1000:.1f} ms")
    assert bed.queries() - before == 1
    assert API in bed.a1.services()
    w1_label = f"labels={int(ipaddress.IPv4Address(bed.a1.worker.ip4)):#x}"
    conntrack = bed.a2.worker.ovs.appctl("dpctl/dump-conntrack", "zone=1")
    assert w1_label in conntrack, conntrack

    # Back up, w2 learns w1 from the BFD of w1's new tunnel and makes one back: BFD (the
    # liveness of closest groups) comes up on both ends.
    bed.a2.start()

    def bfd_up(agent, ip: str) -> list:
        return [p["bfd"].get("forwarding") for p in agent.health()["peers"] if p["node_ip"] == ip]

    def learned() -> bool:
        http_many(bed.tb, bed.client_ns, bed.ips[API]["rr"], 1)  # api stays in use on w1
        return bfd_up(bed.a2, bed.a1.worker.ip4) == [True] == bfd_up(bed.a1, bed.a2.worker.ip4)

    wait_for(learned, timeout=20, what="w2 to learn w1 and BFD to come up")


def test_2_unknown_address_is_refused_at_once_and_asked_for_once(bed):
    before = bed.queries()
    results = connect(bed.tb, bed.client_ns, "10.30.250.250", count=5)
    assert [r["error"] for r in results] == ["ConnectionRefusedError"] * 5, results
    assert max(r["seconds"] for r in results) < 0.5, results
    assert bed.queries() - before == 1
    resolver = bed.a1.health()["cluster"]["resolver"]
    assert resolver["negative"] >= 1 and resolver["refused"] >= 5, resolver
    # Once the negative entry is old, the address is asked for again.
    wait_for(
        lambda: bed.a1.health()["cluster"]["resolver"]["negative"] == 0,
        timeout=NEGATIVE_S + 5,
        what="the negative entry to expire",
    )
    [again] = connect(bed.tb, bed.client_ns, "10.30.250.250")
    assert again["error"] == "ConnectionRefusedError", again
    assert bed.queries() - before == 2


def test_3_concurrent_first_packets_make_one_query(bed):
    before = bed.queries()
    results = connect(bed.tb, bed.client_ns, bed.ips[DB]["rr"], count=8, parallel=True)
    assert [r.get("name") for r in results] == ["db-0"] * 8, results
    assert bed.queries() - before == 1
    # Limitation: in a burst of first packets to one unknown address, some SYNs are sometimes
    # lost (about 1 run in 3 here; the cause is not found yet) and the clients send them again
    # after 1 s. A single first packet (test 1) must arrive without a retry.
    assert max(r["seconds"] for r in results) < 1.5, results


def test_4_server_connects_back_to_the_client_instance_ip(bed):
    """api-0 (w2) opens a connection to the client's instance IP, which w2 never heard of."""
    client_ip = bed.mgrs.job(CLIENT)["instance_list"][0]["instance_ip"]
    [got] = connect(bed.tb, bed.c[API].netns, client_ip)
    assert got["ok"] and got["name"] == "client-0" and got["seconds"] < 0.5, got
    assert CLIENT in bed.a2.services()
    assert {p["node_ip"] for p in bed.a2.health()["peers"]} == {bed.a1.worker.ip4}


def test_5_idle_interest_expires_and_the_cluster_is_told(bed):
    """db saw traffic in test 3 only; api keeps being used. db expires on w1, api does not."""

    def interested(name: str) -> set[str]:
        services = bed.mgrs.ns.call(bed.mgrs.cluster_reader.get, "/api/net/services")
        doc = next((s for s in services if s["job_name"] == name), None)
        return set(doc["interested_nodes"]) if doc else set()

    assert "w1" in interested(DB)
    deadline_results = []

    def db_gone() -> bool:
        # api keeps seeing traffic, so only db may expire.
        deadline_results.extend(http_many(bed.tb, bed.client_ns, bed.ips[API]["rr"], 1))
        return DB not in bed.a1.services()

    wait_for(db_gone, timeout=IDLE_S * 4, what="w1 to drop db")
    assert API in bed.a1.services()
    assert all("info" in r for r in deadline_results), deadline_results
    wait_for(lambda: "w1" not in interested(DB), what="the cluster to drop w1's interest")
    assert "w1" in interested(API)
    assert not [f for f in bed.a1.worker.dump_flows() if bed.ips[DB]["rr"] in f]
    # Used again, it is resolved again on the first packet.
    [got] = connect(bed.tb, bed.client_ns, bed.ips[DB]["rr"])
    assert got["ok"] and got["seconds"] < 0.5, got
    assert bed.a1.health()["cluster"]["expired_interests"] >= 1


def test_6_ipv6_first_connection_to_a_never_seen_service(bed):
    """A new service on w3, used first through its IPv6 round-robin address."""
    job = bed.mgrs.deploy_service("cache", "shop.prod.cache.default")
    bed.mgrs.deploy_instance("cache", 0, "w3")
    cont = bed.tb.add_container(bed.a3.worker, "cache0")
    bed.a3.attach(cont, "shop.prod.cache.default", 0)
    bed.tb.start_http_server(cont, "cache-0")
    rr6 = service_ips(job)["rr6"]
    before = bed.queries()
    [got] = connect(bed.tb, bed.client_ns, rr6)
    assert got["ok"] and got["name"] == "cache-0" and got["seconds"] < 0.5, got
    assert bed.queries() - before == 1


def test_7_closest_first_connection_over_brand_new_tunnels(bed):
    """A fourth node with no tunnel yet uses a closest service on w2 and w3: its buckets watch
    tunnels whose BFD is not up yet, and the first connection must still get through."""
    job = bed.mgrs.deploy_service("edge", "shop.prod.edge.default")
    for number, agent in enumerate((bed.a2, bed.a3)):
        bed.mgrs.deploy_instance("edge", number, agent.worker.name)
        cont = bed.tb.add_container(agent.worker, f"edge{number}")
        agent.attach(cont, "shop.prod.edge.default", number)
        bed.tb.start_http_server(cont, f"edge-{agent.worker.name}")
    w4 = bed.tb.add_worker("w4", "192.0.2.4", "2001:db8::4")
    bed.mgrs.node_tokens["w4"] = issue_jwt(bed.mgrs.jwt_secret, "w4", [NODE], ttl=3600)
    a4 = cluster_agent(bed.tb, bed.mgrs, w4, 4, negative_cache_s=NEGATIVE_S)
    a4.start()
    bed.mgrs.deploy_service("client4", "shop.prod.clientfour.default")
    bed.mgrs.deploy_instance("client4", 0, "w4")
    cont = bed.tb.add_container(w4, "client4")
    a4.attach(cont, "shop.prod.clientfour.default", 0)
    assert a4.health()["peers"] == []

    [got] = connect(bed.tb, cont.netns, service_ips(job)["closest"])
    assert got["ok"] and got["name"] in ("edge-w2", "edge-w3") and got["seconds"] < 0.5, got
