"""The node API answers bad input with a clear 4xx and leaves nothing half-made."""

import dataclasses
import threading

import pytest

from oaknet.model import Instance, Service, ServiceIP
from sdn import config
from sdn.agent import Agent
from sdn.delta import Delta
from sdn.local import LocalError, mapping_text
from sdn.logic_portmap import Uplink
from sdn.nodeapi import create_app

pytestmark = pytest.mark.unit

WEB = "shop.prod.web.default"


class FakeOps:
    """Stands in for the node's OVS: records attaches, fails on request."""

    def __init__(self):
        self.attached: dict[str, object] = {}
        self.fail_next: LocalError | None = None
        self.next_ofport = 10

    def ensure_bridge(self):
        """Nothing to do."""

    def ensure_uplink(self):
        """A patch pair to the underlay bridge."""
        return Uplink(50, 51, 1)

    def replace_phy_flows(self, flows):
        """Remember the underlay bridge's flows."""
        self.phy_flows = flows

    def ensure_tunnel(self, node_ip):
        """A tunnel ofport."""
        return 100

    def list_ports(self):
        """No ports at start."""
        return {}

    def bfd(self, node_ip):
        """No BFD."""
        return {}

    def attach(self, netns, record):
        """Record the attach, or fail like a bad namespace."""
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        self.next_ofport += 1
        self.attached[record.port_name] = record
        return self.next_ofport

    def detach(self, port_name):
        """Forget the port."""
        self.attached.pop(port_name, None)


class _Everything:
    def __contains__(self, item):
        return True


class FakeConntrack:
    """Records the flushes."""

    def __init__(self):
        self.flushed = []

    def reply_srcs(self, zone):
        """Every address has entries here: each removed one is flushed."""
        return _Everything()

    def flush_reply_src(self, zone, addr):
        """Record one flush."""
        self.flushed.append((zone, addr))
        return 1


class FakeSink:
    """Collects deltas as the switch side would apply them."""

    def __init__(self):
        self.deltas: list[Delta] = []

    def submit(self, delta):
        """Apply at once."""
        self.deltas.append(delta)
        done = threading.Event()
        done.set()
        return done

    def connected(self):
        """Always connected."""
        return True


def fake_agent(tmp_path, table: dict, **settings) -> Agent:
    """A started agent of node n1 (192.0.2.1, subnet 10.18.0.0/29) on fake OVS, conntrack and
    switch; ``settings`` add to or replace its configuration."""
    cfg = config.from_dict(
        {
            "node_name": "n1",
            "node_ip": "192.0.2.1",
            "subnet_v4": "10.18.0.0/29",
            "state_dir": str(tmp_path / "state"),
            "socket": str(tmp_path / "s"),
            **settings,
        }
    )
    ag = Agent(cfg, ops=FakeOps(), conntrack=FakeConntrack())
    ag.sink = FakeSink()
    ag.start(table)
    return ag


@pytest.fixture
def agent(tmp_path):
    table = {
        WEB: Service(
            WEB,
            service_ips=[ServiceIP("round-robin", "10.30.0.1")],
            instances=[Instance(n, f"10.30.0.{10 + n}", node_ip="192.0.2.1") for n in range(8)],
        )
    }
    return fake_agent(tmp_path, table, subnet_v6="fc00::/120")


@pytest.fixture
def client(agent):
    return create_app(agent).test_client()


def deploy(client, **body):
    return client.post(
        "/container/deploy", json={"pid": 1, "serviceName": WEB, "instanceNumber": 0, **body}
    )


def test_deploy_and_undeploy_speak_netmanager(client, agent):
    res = deploy(client, portMappings="8080:80;53/udp")
    assert res.status_code == 200
    assert res.json == {"serviceName": WEB, "nsAddress": "10.18.0.2", "nsAddressv6": "fc00::2"}
    [c] = agent.list_containers()
    assert mapping_text(c.port_mappings) == "8080:80/tcp;53:53/udp"
    groups = agent.desired()[1]
    assert any(g.group_id == 0x0A1E0001 for g in groups)
    for path in ("/container/undeploy", "/docker/undeploy"):
        res = client.post(path, json={"serviceName": WEB, "instanceNumber": 0})
        assert res.status_code == 200
    assert agent.list_containers() == []
    assert agent.ops.attached == {}
    assert (1, "10.18.0.2") in agent.conntrack.flushed


def test_own_api_returns_instance_ips_and_lists(client, agent):
    res = client.post("/api/v1/containers", json={"pid": 1, "service": WEB, "instance": 3})
    assert res.status_code == 201
    assert res.json["instance_ip"] == "10.30.0.13" and res.json["gateway_v4"] == "10.18.0.1"
    assert [c["instance"] for c in client.get("/api/v1/containers").json["containers"]] == [3]
    assert client.get("/api/v1/services").json["services"][0]["name"] == WEB
    health = client.get("/api/v1/health").json
    assert health["containers"] == 1 and health["desired_flows"] > 0
    assert client.delete(f"/api/v1/containers/{WEB}/3").status_code == 200
    res = client.delete(f"/api/v1/containers/{WEB}/3")
    assert res.status_code == 404 and res.json["error"] == "unknown_container"
    # Errors of this API name its own fields.
    res = client.post("/api/v1/containers", json={"pid": 1, "service": WEB, "instance": 99})
    assert (res.status_code, res.json["field"]) == (404, "instance")
    res = client.post("/api/v1/containers", json={"pid": 1, "service": "a.b.nothere.c"})
    assert (res.status_code, res.json["field"]) == (400, "instance")
    res = client.post(
        "/api/v1/containers", json={"pid": 1, "service": "a.b.nothere.c", "instance": 0}
    )
    assert (res.status_code, res.json["field"]) == (404, "service")


@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"pid": "1"}, 400, "pid"),
        ({"pid": True}, 400, "pid"),
        ({"pid": -4}, 400, "pid"),
        ({"instanceNumber": "0"}, 400, "instanceNumber"),
        ({"instanceNumber": -1}, 400, "instanceNumber"),
        ({"instanceNumber": 10**12}, 400, "instanceNumber"),
        ({"instanceNumber": 2**70}, 400, "instanceNumber"),
        ({"serviceName": "not-a-job"}, 400, "serviceName"),
        ({"serviceName": 7}, 400, "serviceName"),
        ({"serviceName": "shop.prod.nothere.default"}, 404, "serviceName"),
        ({"instanceNumber": 99}, 404, "instanceNumber"),
        ({"portMappings": "80:99999"}, 400, "portMappings"),
        ({"portMappings": "http"}, 400, "portMappings"),
        ({"portMappings": "4789/udp"}, 400, "portMappings"),
        ({"portMappings": 8080}, 400, "portMappings"),
    ],
)
def test_bad_fields_are_named_and_nothing_is_made(client, agent, body, status, field):
    res = deploy(client, **body)
    assert res.status_code == status, res.json
    assert res.json["field"] == field and res.json["detail"]
    assert agent.list_containers() == [] and agent.ops.attached == {}
    assert agent.pool.used == set()


def test_malformed_json_and_wrong_shapes(client, agent):
    res = client.post("/container/deploy", data=b"{not json", content_type="application/json")
    assert res.status_code == 400 and res.json["error"] == "malformed_json"
    res = client.post("/container/deploy", json=[1, 2])
    assert res.status_code == 400 and res.json["field"] == "body"
    res = client.post("/api/v1/containers", json={"service": WEB, "instance": 0})
    assert res.status_code == 400 and res.json["field"] == "netns"
    res = client.post(
        "/api/v1/containers", json={"netns": "/x", "pid": 3, "service": WEB, "instance": 0}
    )
    assert res.status_code == 400
    assert client.get("/nowhere").status_code == 404
    assert client.get("/container/deploy").status_code == 405
    assert agent.list_containers() == []


def test_port_mappings_reach_the_underlay_bridge_and_conflict(client, agent):
    assert deploy(client, portMappings="8080:80").status_code == 200
    assert any(f.match_dict().get("tcp_dst") == 8080 for f in agent.ops.phy_flows)
    res = deploy(client, instanceNumber=1, portMappings="9000;8080")
    assert res.status_code == 409 and res.json["error"] == "port_conflict"
    assert deploy(client, instanceNumber=1, portMappings="8080/udp").status_code == 200
    client.post("/container/undeploy", json={"serviceName": WEB, "instanceNumber": 0})
    assert not any(f.match_dict().get("tcp_dst") == 8080 for f in agent.ops.phy_flows)


def test_duplicate_instance_conflicts(client, agent):
    assert deploy(client).status_code == 200
    res = deploy(client)
    assert res.status_code == 409 and res.json["error"] == "duplicate_instance"
    assert len(agent.ops.attached) == 1 and len(agent.pool.used) == 1


class _Cluster:
    """The agent's cluster side, reduced to what an attach asks of it."""

    def learn_service(self, service, instance):
        """The table is current."""

    def report_deployed(self, c):
        """Nothing to tell."""


def test_an_instance_placed_on_another_node_is_not_taken_over(client, agent):
    agent.cluster = _Cluster()  # the cluster's placement is authoritative (offline: a file)
    svc = agent.file_table[WEB]
    moved = [
        dataclasses.replace(i, node_ip="192.0.2.9") if i.number == 3 else i for i in svc.instances
    ]
    agent.set_table({WEB: dataclasses.replace(svc, instances=moved)})
    res = deploy(client, instanceNumber=3)
    assert res.status_code == 409 and res.json["error"] == "placed_elsewhere"
    assert "192.0.2.9" in res.json["detail"]
    assert agent.ops.attached == {} and not agent.pool.used
    assert deploy(client, instanceNumber=2).status_code == 200


def test_failed_attach_releases_the_address(client, agent):
    agent.ops.fail_next = LocalError(404, "unknown_netns", "pid", "no such process")
    res = deploy(client, pid=999999)
    assert res.status_code == 404 and res.json["error"] == "unknown_netns"
    assert agent.pool.used == set() and agent.list_containers() == []
    assert deploy(client).json["nsAddress"] == "10.18.0.3"  # the next address, not reused


def test_subnet_exhaustion_is_409(client, agent):
    # A /29 holds 6 hosts: the gateway and five containers.
    for n in range(5):
        assert deploy(client, instanceNumber=n).status_code == 200
    res = deploy(client, instanceNumber=5)
    assert res.status_code == 409 and res.json["error"] == "subnet_exhausted"
    assert len(agent.ops.attached) == 5
    client.post("/container/undeploy", json={"serviceName": WEB, "instanceNumber": 2})
    assert deploy(client, instanceNumber=5).json["nsAddress"] == "10.18.0.4"


def test_register_once(client, agent):
    assert client.post("/register", json={"client_id": "w1"}).status_code == 200
    assert (
        client.post("/register", json={"client_id": "w1", "cluster_address": "x"}).status_code
        == 200
    )
    res = client.post("/register", json={"client_id": "w2"})
    assert res.status_code == 400 and res.json["error"] == "already_registered"
    assert client.post("/register", json={}).json["field"] == "client_id"


def test_restart_rebuilds_the_same_flows(agent, tmp_path):
    c = agent.attach(1, WEB, 4)
    before = agent.desired()
    ports = {c.port_name: {"ofport": c.ofport, "external_ids": c.external_ids()}}
    again = Agent(agent.cfg, ops=FakeOps(), conntrack=FakeConntrack())
    again.ops.list_ports = lambda: ports
    again.start(dict(agent.file_table))
    after = again.desired()
    assert {f.cookie for f in after[0]} == {f.cookie for f in before[0]}
    assert sorted(after[1], key=lambda g: g.group_id) == sorted(
        before[1], key=lambda g: g.group_id
    )
    assert again.pool.used == agent.pool.used


def test_unexpected_failure_is_a_json_500(client, agent):
    assert deploy(client).status_code == 200

    def broken(port_name):
        raise RuntimeError("ovsdb went away")

    agent.ops.detach = broken
    res = client.delete(f"/api/v1/containers/{WEB}/0")
    assert res.status_code == 500
    assert res.json == {"error": "internal", "detail": "RuntimeError: ovsdb went away"}
