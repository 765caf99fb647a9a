"""The root manager's HTTP routes (oakestra-net paths and bodies); logic is in the modules."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from flask import Blueprint, Response, current_app, jsonify, request

from oaknet import oakestra, web
from oaknet.auth import CLUSTER, ORCHESTRATOR, READER, Principal
from oaknet.fastlane import Answer, FastRoute, query_args
from oaknet.feed import Feed
from oaknet.model import MAX_INSTANCE_NUMBER, ModelError, parse_job_name
from oaknet.ops import feed_health, ops_blueprint
from oaknet.pools import Pools
from oaknet.store import Change
from oaknet.watching import watch_params, watch_response
from oaknet.web import ApiError, bad_request, field, int_field, json_body, not_found, requires
from root_manager.answers import Answers
from root_manager.clusters import Clusters, check_cluster_id
from root_manager.services import (
    SERVICE,
    UNDEPLOY_ALL,
    Record,
    Services,
    check_job_id,
)

net = Blueprint("net", __name__, url_prefix="/api/net")
pubnet = Blueprint("pubnet", __name__, url_prefix="/api/pubnet/service/netinfo")


@dataclass
class RootState:
    """What the routes work on; one per app."""

    services: Services
    clusters: Clusters
    pools: Pools
    feed: Feed
    max_timeout: float
    answers: Answers = dataclass_field(default_factory=Answers)


def _state() -> RootState:
    return current_app.extensions["oaknet_root"]


def _calling_cluster() -> str | None:
    """The caller's cluster id when it acts as a cluster (not as orchestrator or admin)."""
    return _cluster_of(web.principal())


def _cluster_of(who: Principal) -> str | None:
    if CLUSTER in who.roles and not who.has(ORCHESTRATOR):
        return who.subject
    return None


def _job(record: Record) -> Response:
    return jsonify(oakestra.job_document(record.service, record.descriptor))


# -- clusters ------------------------------------------------------------------------------


@net.post("/cluster")
@requires(ORCHESTRATOR, CLUSTER)
def register_cluster():
    """Register (or update) a cluster: {cluster_id, cluster_address, cluster_port}."""
    body = json_body()
    cluster_id = check_cluster_id(field(body, "cluster_id", (str, int)))
    caller = _calling_cluster()
    if caller is not None and caller != cluster_id:
        raise ApiError(
            403, "forbidden", f"a cluster may only register itself ({caller})", "cluster_id"
        )
    doc = _state().clusters.register(
        cluster_id, body.get("cluster_address"), body.get("cluster_port")
    )
    return jsonify(
        message="cluster registered", cluster_id=doc["cluster_id"], status=doc["status"]
    )


@net.delete("/interest/<job_name>")
@requires(CLUSTER)
def remove_interest(job_name: str):
    """Drop the calling cluster's interest in a job (name with '_' for '.')."""
    name = oakestra.decode_path_name(job_name)
    removed = _state().clusters.remove_interest(web.principal().subject, name)
    return jsonify(message="deregistered", job_name=name, removed=removed)


# -- services and instances ----------------------------------------------------------------


@net.post("/service/deploy")
@requires(ORCHESTRATOR)
def deploy_service():
    """Create a service and its service IPs: {_id, deployment_descriptor: {...}}."""
    body = json_body()
    job_id = field(body, "_id", (str, int))
    descriptor = field(body, "deployment_descriptor", dict)
    record, _created = _state().services.deploy(job_id, descriptor)
    return _job(record)


@net.delete("/service/<job_id>")
@requires(ORCHESTRATOR)
def remove_service(job_id: str):
    """Delete a service that has no instances left; its service IPs are released."""
    record = _state().services.remove(check_job_id(job_id))
    return jsonify(message="Job removed successfully", job_name=record.service.name)


@net.post("/instance/deploy")
@requires(ORCHESTRATOR)
def deploy_instance():
    """Add an instance: {_id, instance_number, cluster_id, worker_id?, host_ip?}."""
    body = json_body()
    job_id = field(body, "_id", (str, int))
    number = int_field(body, "instance_number", low=0, high=MAX_INSTANCE_NUMBER)
    cluster_id = check_cluster_id(field(body, "cluster_id", (str, int)))
    worker_id = field(body, "worker_id", str, required=False)
    host_ip = _ip_field(body, "host_ip")
    record = _state().services.deploy_instance(job_id, number, cluster_id, worker_id, host_ip)
    return _job(record)


@net.delete("/<job_id>/<instance_number>")
@requires(ORCHESTRATOR)
def undeploy_instance(job_id: str, instance_number: str):
    """Remove an instance (-1: all of the service); its instance IPs are released."""
    number = int_field({"instance_number": instance_number}, "instance_number", low=UNDEPLOY_ALL)
    record = _state().services.undeploy_instance(check_job_id(job_id), number)
    return _job(record)


@net.post("/service/net_deploy_status")
@requires(CLUSTER, ORCHESTRATOR)
def net_deploy_status():
    """Report where instances run, or that their node stopped them (item status "stopped").

    Body: {job_id, instances: [{instance_number, namespace_ip, ..., status}]}.
    """
    body = json_body()
    job_id = field(body, "job_id", (str, int))
    items = field(body, "instances", list)
    if not items:
        raise bad_request("instances must not be empty", "instances")
    reports = [_report(item, i) for i, item in enumerate(items)]
    record = _state().services.report(job_id, reports, _calling_cluster())
    return _job(record)


@net.get("/service/<service_name>/instances")
@requires(CLUSTER, ORCHESTRATOR)
def table_query_by_name(service_name: str):
    """A service by job name (with '_' for '.'); registers the calling cluster's interest."""
    return _table_response(_query_by_name(web.principal(), service_name))


def _query_by_name(who: Principal, service_name: str) -> tuple[bytes, int]:
    name = oakestra.decode_path_name(service_name)
    try:
        parse_job_name(name)
    except ModelError as exc:
        raise bad_request(exc.message, "service_name") from None
    return _table_query(who, lambda: _state().services.by_name(name), "name", name)


@net.get("/service/ip/<service_ip>/instances")
@requires(CLUSTER, ORCHESTRATOR)
def table_query_by_ip(service_ip: str):
    """A service by service IP or instance IP (v4 with '_' for '.'); registers interest."""
    address = _path_ip(service_ip, "service_ip")
    services = _state().services
    return _table_response(
        _table_query(web.principal(), lambda: services.by_ip(address), "ip", address)
    )


@net.get("/services")
@requires(ORCHESTRATOR, READER)
def list_services():
    """Every service as job documents."""
    return jsonify(
        [oakestra.job_document(r.service, r.descriptor) for r in _state().services.all()]
    )


@net.get("/subnet")
@requires(CLUSTER)
def subnet():
    """A node subnet pair for the calling cluster (?node=<id> makes it idempotent per node)."""
    node = request.args.get("node") or None
    return jsonify(_state().clusters.allocate_subnet(web.principal().subject, node))


@net.delete("/subnet/<address>")
@requires(CLUSTER)
def release_subnet(address: str):
    """Give back a node subnet pair (either address, v4 with '_' or '.')."""
    cluster = _calling_cluster()
    return jsonify(_state().clusters.release_subnet(cluster, _path_ip(address, "subnet")))


@net.get("/watch")
@requires(CLUSTER, ORCHESTRATOR)
def watch():
    """Long-poll the change feed: ?since=REV&timeout=S; a cluster sees only its interests."""
    return _watch(web.principal(), request.args)


def _watch(who: Principal, args: Mapping[str, str]) -> Response:
    state = _state()
    since, timeout = watch_params(args, 30.0, state.max_timeout)
    cluster = _cluster_of(who)

    def select(batch: list[Change]) -> list[Change]:
        batch = [c for c in batch if c.kind == SERVICE]
        if cluster is None:
            return batch
        # One key lookup per distinct service in the batch, read after the batch committed.
        wanted = {
            s for s in {c.subject for c in batch} if state.clusters.is_interested(cluster, s)
        }
        return [c for c in batch if c.subject in wanted]

    def resync_docs() -> list[dict]:
        if cluster is None:
            records = state.services.all()
        else:
            records = state.services.by_names(state.clusters.interests(cluster))
        return [r.to_doc() for r in records]

    return watch_response(state.feed, since, timeout, select, resync_docs)


# -- public netinfo ------------------------------------------------------------------------


@pubnet.get("/<service_name>")
@requires(READER, ORCHESTRATOR, CLUSTER)
def netinfo_by_name(service_name: str):
    """Public network info of a service by job name (no namespace or host data)."""
    name = oakestra.decode_path_name(service_name)
    record = _state().services.by_name(name)
    if record is None:
        raise not_found(f"no service named {name}", "service_name")
    return jsonify(oakestra.netinfo(record.service, record.descriptor))


@pubnet.get("/ip/<service_ip>")
@requires(READER, ORCHESTRATOR, CLUSTER)
def netinfo_by_ip(service_ip: str):
    """Public network info of the service owning a service IP or instance IP."""
    address = _path_ip(service_ip, "service_ip")
    record = _state().services.by_ip(address)
    if record is None:
        raise not_found(f"no service with address {address}", "service_ip")
    return jsonify(oakestra.netinfo(record.service, record.descriptor))


@pubnet.get("/available-ip")
@pubnet.get("/available-ip/")
@pubnet.get("/available-ip/<count>")
@requires(READER, ORCHESTRATOR, CLUSTER)
def available_ips(count: str = "1"):
    """The next free service IPs without reserving them (?v=4 or ?v=6; default both)."""
    n = int_field({"count": count}, "count", low=1, high=1000)
    version = request.args.get("v")
    if version not in (None, "", "4", "6"):
        raise bad_request("v must be 4 or 6", "v")
    state = _state()
    out = []
    if version in (None, "", "4"):
        out += [
            {"Address": a, "Address_v6": None, "IpType": "IPv4"}
            for a in state.pools.service_v4.preview(state.services.store, n)
        ]
    if version in (None, "", "6"):
        out += [
            {"Address": None, "Address_v6": a, "IpType": "IPv6"}
            for a in state.pools.round_robin_v6.preview(state.services.store, n)
        ]
    return jsonify(available_service_ips=out)


def _health() -> dict:
    """Liveness and store reachability."""
    return {"status": "ok", **feed_health(_state().feed)}


ops = ops_blueprint("ops", "oaknet root manager", _health)


# -- helpers -------------------------------------------------------------------------------


def _table_query(who: Principal, lookup, kind: str, key: str) -> tuple[bytes, int]:
    """(JSON body, revision) of a table query; registers a calling cluster's interest."""
    state = _state()
    # The revision is read first: a watcher starting from it may see a change twice, never miss.
    revision = state.feed.store.head()
    answer = state.answers.get(f"{kind}={key}", revision)
    if answer is None:
        record = lookup()
        if record is None:
            raise not_found(f"no service {key}", "service")
        answer = (record.service.job_id, record.service.name, _job(record).get_data())
        state.answers.put(f"{kind}={key}", revision, answer)
    job_id, name, body = answer
    cluster = _cluster_of(who)
    if cluster is not None and state.clusters.add_interest(cluster, name):
        # Read again after the interest is stored, so no change can fall in between.
        record = state.services.get(job_id)
        if record is not None:
            body = _job(record).get_data()
    return body, revision


def _table_response(answer: tuple[bytes, int]) -> Response:
    body, revision = answer
    resp = Response(body, mimetype=current_app.json.mimetype)
    resp.headers["X-Oaknet-Revision"] = str(revision)
    return resp


def _fast_query(who: Principal | None, segment: str, environ: dict) -> Answer:
    body, revision = _query_by_name(who, segment)
    return body, [("X-Oaknet-Revision", str(revision))]


def _query_only_reads(who: Principal | None, segment: str) -> bool:
    cluster = _cluster_of(who) if who is not None else None
    if cluster is None:
        return True
    return _state().clusters.seen_interest(cluster, oakestra.decode_path_name(segment))


def _fast_watch(who: Principal | None, _segment: str, environ: dict) -> Answer:
    return _watch(who, query_args(environ)).get_data(), []


def fast_routes(local_store: bool) -> list[FastRoute]:
    """The two routes every cluster calls all the time, for the server's fast lane.

    A table query that only reads a local store never waits: the server loop answers it
    itself. A cluster's first query of a service (an interest write) and every query on a
    remote store (network round trips) go to a worker thread, as the watch always does.
    """
    return [
        FastRoute(
            "net.table_query_by_name",
            "/api/net/service/",
            "/instances",
            _fast_query,
            inline=_query_only_reads if local_store else None,
        ),
        FastRoute("net.watch", "/api/net/watch", "", _fast_watch, segment=False),
    ]


def _report(item: object, i: int) -> dict:
    where = f"instances[{i}]"
    if not isinstance(item, dict):
        raise bad_request(f"{where} must be an object", where)
    status = field(item, "status", str, required=False, where=where) or "running"
    if status not in ("running", "stopped"):
        raise bad_request(f"{where}.status must be running or stopped", f"{where}.status")
    if status == "stopped":
        # Its node stopped it without an undeploy: every cluster stops sending to it.
        return {
            "instance_number": int_field(item, "instance_number", low=0, where=where),
            "status": status,
            "worker_id": field(item, "worker_id", str, required=False, where=where),
        }
    v6 = item.get("namespace_ip_v6")
    report = {
        "instance_number": int_field(item, "instance_number", low=0, where=where),
        "namespace_ip": _ip_field(item, "namespace_ip", where),
        "namespace_ip_v6": None
        if v6 in ("", "<nil>")
        else _ip_field(item, "namespace_ip_v6", where),
        "host_ip": _ip_field(item, "host_ip", where, required=True),
        "host_port": int_field(item, "host_port", required=False, low=0, high=65535, where=where),
        "worker_id": field(item, "worker_id", str, required=False, where=where),
        "status": status,
    }
    if report["namespace_ip"] is None and report["namespace_ip_v6"] is None:
        raise bad_request(
            f"{where} needs namespace_ip or namespace_ip_v6", f"{where}.namespace_ip"
        )
    return report


def _ip_field(
    body: dict, name: str, where: str | None = None, required: bool = False
) -> str | None:
    label = f"{where}.{name}" if where else name
    value = field(body, name, str, required=required, where=where)
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise bad_request(f"{label} {value!r} is not an IP address", label) from None


def _path_ip(text: str, label: str) -> str:
    try:
        return str(ipaddress.ip_address(oakestra.decode_path_name(text)))
    except ValueError:
        raise bad_request(f"{text!r} is not an IP address", label) from None
