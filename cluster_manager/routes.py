"""The cluster manager's HTTP routes; the logic is in table.py, nodes.py and cache.py.

Orchestrator side (oakestra-net's paths and bodies; role ``orchestrator``):
  POST   /api/net/deployment                {job_name}
  DELETE /api/net/deployment/<job_name>
  POST   /api/net/job/update                {job_name, instance_number, type}
  GET    /api/net/services, /api/net/nodes  (also role ``reader``)
Worker nodes (HTTP instead of the reference's MQTT topics; role ``node``, the node is the
token's subject):
  POST   /api/net/node/register             {node_id?, host_ip?, host_port?} -> its subnets
  DELETE /api/net/node/register             the node leaves; its subnets go back to the root
  GET    /api/net/node/service/<name>/instances      table query by job name ('_' for '.')
  GET    /api/net/node/service/ip/<ip>/instances     table query by service or instance IP
  POST   /api/net/node/service/deployed     {job_name|appname, instance_number, nsip, nsipv6,
                                             host_ip?, host_port?}
  POST   /api/net/node/service/undeployed   {job_name|appname, instance_number}
  POST   /api/net/node/service/address-changed  {job_name|appname, instance_number, host_ip,
                                                 host_port?}
  DELETE /api/net/node/interest/<job_name>
  GET    /api/net/node/services             the services the node is interested in
  GET    /api/net/node/watch?since=REV&timeout=S    changes of those services, long-polled
Open: /api/health, /metrics, /api/openapi.json.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flask import Blueprint, current_app, jsonify, request

from cluster_manager.cache import SERVICE, Cache, Entry
from cluster_manager.follower import Refresher, RootFollower
from cluster_manager.nodes import Nodes, check_ip, check_node_id
from cluster_manager.table import Table
from oaknet import oakestra, web
from oaknet.auth import NODE, ORCHESTRATOR, READER
from oaknet.feed import Feed
from oaknet.model import ModelError, parse_job_name
from oaknet.ops import feed_health, ops_blueprint
from oaknet.store import Change
from oaknet.watching import watch_params, watch_response
from oaknet.web import ApiError, bad_request, field, int_field, json_body, requires

net = Blueprint("cluster_net", __name__, url_prefix="/api/net")
node = Blueprint("cluster_node", __name__, url_prefix="/api/net/node")

UPDATE_TYPES = ("DEPLOYMENT", "UNDEPLOYMENT")


@dataclass
class ClusterState:
    """What the routes work on; one per app."""

    cluster_id: str
    cache: Cache
    nodes: Nodes
    table: Table
    follower: RootFollower
    refresher: Refresher
    feed: Feed
    max_timeout: float


def _state() -> ClusterState:
    return current_app.extensions["oaknet_cluster"]


# -- orchestrator side (the reference's endpoints) -----------------------------------------


@net.post("/deployment")
@requires(ORCHESTRATOR)
def deploy():
    """A service arrives in this cluster: {job_name}; it is fetched from the root and kept."""
    name = _job_name(json_body(), ("job_name",))
    entry = _state().table.deploy(name)
    return jsonify(
        message="job stored succesfully",
        job_name=name,
        instances=len(entry.service.instances) if entry.service else 0,
    )


@net.delete("/deployment/<job_name>")
@requires(ORCHESTRATOR)
def undeploy(job_name: str):
    """A service leaves this cluster (name with '_' or '.'); kept while nodes still need it."""
    name = _path_job_name(job_name)
    _state().table.undeploy(name)
    return jsonify(message="job removed succesfully", job_name=name)


@net.post("/job/update")
@requires(ORCHESTRATOR)
def job_update():
    """The root's push: {job_name, instance_number, type: DEPLOYMENT|UNDEPLOYMENT}."""
    body = json_body()
    name = _job_name(body, ("job_name",))
    int_field(body, "instance_number", low=-1)
    kind = field(body, "type", str)
    if kind not in UPDATE_TYPES:
        raise bad_request(f"type must be {' or '.join(UPDATE_TYPES)}", "type")
    state = _state()
    if state.cache.entry(name) is not None:
        state.refresher.request(name)
    return jsonify(message="update notification received", job_name=name)


@net.get("/services")
@requires(ORCHESTRATOR, READER)
def services():
    """Every cached service as a job document, with whether it is deployed and who needs it."""
    state = _state()
    out = []
    for entry in state.cache.entries():
        view = entry.view()
        if view is None:
            continue
        doc = oakestra.job_document(view, entry.descriptor)
        doc.update(
            deployed=entry.deployed,
            interested_nodes=sorted(state.cache.interested_nodes(entry.name)),
        )
        out.append(doc)
    return jsonify(out)


@net.get("/nodes")
@requires(ORCHESTRATOR, READER)
def nodes():
    """Every registered node with its subnets and underlay address."""
    return jsonify(_state().nodes.all())


# -- worker nodes --------------------------------------------------------------------------


@node.post("/register")
@requires(NODE)
def register():
    """Register the calling node: {node_id?, host_ip?, host_port?}; its subnets (kept)."""
    body = json_body() if request.get_data(cache=True) else {}
    node_id = _node_id()
    claimed = body.get("node_id", node_id)
    if claimed != node_id:
        raise ApiError(403, "forbidden", f"a node may only register itself ({node_id})", "node_id")
    host_ip = check_ip(body.get("host_ip"), "host_ip")
    host_port = int_field(body, "host_port", required=False, low=1, high=65535)
    doc = _state().nodes.register(node_id, host_ip, host_port)
    return jsonify(doc)


@node.delete("/register")
@requires(NODE)
def deregister():
    """The calling node leaves: its interests end and its subnets go back to the root."""
    node_id = _node_id()
    _state().table.forget_node(node_id)
    return jsonify(message="node deregistered", node_id=node_id)


@node.get("/service/<service_name>/instances")
@requires(NODE)
def query_by_name(service_name: str):
    """Table query by job name; the node becomes interested (a miss asks the root)."""
    name = _path_job_name(service_name, "service_name")
    return _table_answer(lambda node_id: _state().table.query_name(name, node_id), name)


@node.get("/service/ip/<service_ip>/instances")
@requires(NODE)
def query_by_ip(service_ip: str):
    """Table query by service IP or instance IP (v4 with '_' or '.'); registers interest."""
    address = check_ip(oakestra.decode_path_name(service_ip), "service_ip")
    return _table_answer(lambda node_id: _state().table.query_ip(address, node_id), address)


@node.post("/service/deployed")
@requires(NODE)
def service_deployed():
    """The node runs an instance: forwarded to the root, then fed to interested nodes."""
    body = json_body()
    name = _job_name(body)
    number = int_field(body, "instance_number", low=0)
    status = field(body, "status", str, required=False)
    if status not in (None, "DEPLOYED"):
        raise bad_request("status must be DEPLOYED", "status")
    nsip = _ip(body, "nsip", 4)
    v6 = body.get("nsipv6")
    nsipv6 = None if v6 in ("", "<nil>") else _ip(body, "nsipv6", 6)
    host_ip = check_ip(body.get("host_ip"), "host_ip")
    host_port = int_field(body, "host_port", required=False, low=0, high=65535)
    entry = _state().table.report_deployed(
        _node_id(), name, number, nsip, nsipv6, host_ip, host_port
    )
    return _instance_answer(entry, number)


@node.post("/service/undeployed")
@requires(NODE)
def service_undeployed():
    """The node stopped an instance: the cluster's nodes stop sending to it at once."""
    body = json_body()
    name = _job_name(body)
    number = int_field(body, "instance_number", low=0)
    entry = _state().table.report_undeployed(_node_id(), name, number)
    return _instance_answer(entry, number)


@node.post("/service/address-changed")
@requires(NODE)
def address_changed():
    """The node's underlay address changed for an instance: forwarded to the root."""
    body = json_body()
    name = _job_name(body)
    number = int_field(body, "instance_number", low=0)
    host_ip = check_ip(field(body, "host_ip", str), "host_ip")
    host_port = int_field(body, "host_port", required=False, low=0, high=65535)
    entry = _state().table.report_address(_node_id(), name, number, host_ip, host_port)
    return _instance_answer(entry, number)


@node.delete("/interest/<job_name>")
@requires(NODE)
def remove_interest(job_name: str):
    """The node no longer needs a service; the cluster's last such node tells the root."""
    name = _path_job_name(job_name)
    removed = _state().table.remove_interest(name, _node_id())
    return jsonify(message="deregistered", job_name=name, removed=removed)


@node.get("/services")
@requires(NODE)
def node_services():
    """The services the calling node is interested in, as feed documents."""
    state = _state()
    return jsonify(revision=state.feed.store.head(), services=_interesting(_node_id()))


@node.get("/watch")
@requires(NODE)
def watch():
    """Long-poll ?since=REV&timeout=S: changes of the services the node is interested in."""
    state = _state()
    node_id = _node_id()
    since, timeout = watch_params(request.args, 30.0, state.max_timeout)

    def select(batch: list[Change]) -> list[Change]:
        names = state.cache.interests_of(node_id)
        return [c for c in batch if c.kind == SERVICE and c.subject in names]

    return watch_response(state.feed, since, timeout, select, lambda: _interesting(node_id))


# -- operations ----------------------------------------------------------------------------


def _health() -> dict:
    """Liveness, store reachability and the root link's state."""
    state = _state()
    root = state.follower.status()
    return {
        "status": "ok" if root["connected"] else "degraded",
        "cluster_id": state.cluster_id,
        **feed_health(state.feed),
        "nodes": state.nodes.count(),
        "root": root,
    }


ops = ops_blueprint("cluster_ops", "oaknet cluster manager", _health, (__doc__ or "").strip())


# -- helpers -------------------------------------------------------------------------------


def _node_id() -> str:
    return check_node_id(web.principal().subject)


def _job_name(body: dict, keys: tuple[str, ...] = ("job_name", "appname")) -> str:
    """The job name under the first of ``keys`` present (``appname`` is the reference's)."""
    key = next((k for k in keys if body.get(k) is not None), keys[0])
    value = field(body, key, str)
    try:
        parse_job_name(value)
    except ModelError as exc:
        raise bad_request(exc.message, key) from None
    return value


def _path_job_name(text: str, label: str = "job_name") -> str:
    name = oakestra.decode_path_name(text)
    try:
        parse_job_name(name)
    except ModelError as exc:
        raise bad_request(exc.message, label) from None
    return name


def _ip(body: dict, name: str, version: int) -> str | None:
    value = check_ip(body.get(name), name)
    if value is not None and ipaddress.ip_address(value).version != version:
        raise bad_request(f"{name} must be an IPv{version} address", name)
    return value


def _table_answer(lookup, key: str):
    state = _state()
    node_id = _node_id()
    state.nodes.require(node_id)
    # Read before the lookup: a watch from this revision may repeat a change, never miss one.
    revision = state.feed.store.head()
    entry: Entry = lookup(node_id)
    view = entry.view()
    return jsonify(
        app_name=entry.name,
        job_name=entry.name,
        query_key=key,
        instance_list=oakestra.table_entries(view),
        service_ip_list=oakestra.service_ip_list(view),
        service=view.to_dict(),
        revision=revision,
    )


def _instance_answer(entry: Entry, number: int):
    view = entry.view()
    inst = view.instance(number) if view else None
    return jsonify(
        message="status updated",
        job_name=entry.name,
        instance=oakestra.instance_entry(inst) if inst else None,
    )


def _interesting(node_id: str) -> list[dict]:
    state = _state()
    out = []
    for name in sorted(state.cache.interests_of(node_id)):
        entry = state.cache.entry(name)
        doc = entry.visible() if entry else None
        if doc is not None:
            out.append(doc)
    return out
