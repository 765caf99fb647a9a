"""The node API: HTTP+JSON on a unix socket for the container runtime (NetManager-compatible).

Oakestra's NodeEngine paths (``/register``, ``/container/deploy``, ``/container/undeploy``,
``/docker/undeploy``) keep their request and answer shapes; ``/api/v1/...`` is our own. Errors
are ``{"error": code, "detail": text, "field": name}`` with a 4xx status; a subnet without a
free address answers 409 (``subnet_exhausted``). The socket file is mode 0660 and owned by the
agent's user: file permissions are the access control.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from oaknet.model import MAX_INSTANCE_NUMBER, ModelError, parse_job_name
from sdn.agent import Agent
from sdn.local import Container, LocalError

LOG = logging.getLogger(__name__)


def create_app(agent: Agent, status: Callable[[], dict] | None = None) -> Flask:
    """The Flask app of the node API for ``agent``; ``status`` adds switch/peer facts."""
    app = Flask("oaknet-node")

    @app.errorhandler(LocalError)
    def _local_error(exc: LocalError):
        return jsonify(error=exc.error, detail=exc.detail, field=exc.field), exc.status

    @app.errorhandler(Exception)
    def _internal_error(exc: Exception):
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        LOG.exception("node API: %s %s failed", request.method, request.path)
        return jsonify(error="internal", detail=f"{type(exc).__name__}: {exc}"), 500

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return jsonify(error=exc.name.lower().replace(" ", "_"), detail=exc.description), exc.code

    @app.post("/register")
    def register():
        body = _body()
        client_id = _field(body, "client_id", str)
        _field(body, "cluster_address", str, required=False)
        if agent.registered_id not in (None, client_id):
            raise LocalError(
                400,
                "already_registered",
                "client_id",
                f"this node is registered as {agent.registered_id}",
            )
        if agent.registered_id is None:
            agent.registered_id = client_id
            LOG.info("registered as %s", client_id)
        return jsonify(client_id=client_id, node_name=agent.cfg.node_name)

    @app.post("/container/deploy")
    def deploy():
        body = _body()
        pid = _field(body, "pid", int)
        if pid <= 0:
            raise LocalError(400, "bad_request", "pid", f"{pid} is not a PID")
        service = _service_name(body, "serviceName")
        instance = _instance(body, "instanceNumber")
        mappings = _field(body, "portMappings", str, required=False)
        c = agent.attach(pid, service, instance, mappings)
        return jsonify(
            serviceName=service, nsAddress=c.namespace_ip, nsAddressv6=c.namespace_ip_v6
        )

    def undeploy():
        body = _body()
        service = _field(body, "serviceName", str)
        instance = _instance(body, "instanceNumber")
        agent.detach(service, instance)
        # Like NetManager: 200 whether or not the instance was here.
        return jsonify(serviceName=service, instanceNumber=instance)

    app.add_url_rule("/container/undeploy", "container_undeploy", undeploy, methods=["POST"])
    app.add_url_rule("/docker/undeploy", "docker_undeploy", undeploy, methods=["POST"])

    @app.post("/api/v1/containers")
    def add_container():
        body = _body()
        netns = _field(body, "netns", str, required=False)
        pid = _field(body, "pid", int, required=False)
        if (netns is None) == (pid is None):
            raise LocalError(400, "bad_request", "netns", "give exactly one of netns and pid")
        if pid is not None and pid <= 0:
            raise LocalError(400, "bad_request", "pid", f"{pid} is not a PID")
        service = _service_name(body, "service")
        instance = _instance(body, "instance")
        mappings = _field(body, "port_mappings", str, required=False)
        try:
            c = agent.attach(netns if netns is not None else pid, service, instance, mappings)
        except LocalError as exc:
            # The agent names the NetManager fields; this request has its own names.
            exc.field = _OWN_FIELDS.get(exc.field, exc.field)
            raise
        return jsonify(_container_view(agent, c)), 201

    @app.get("/api/v1/containers")
    def list_containers():
        return jsonify(containers=[_container_view(agent, c) for c in agent.list_containers()])

    @app.delete("/api/v1/containers/<service>/<int:instance>")
    def delete_container(service: str, instance: int):
        c = agent.detach(service, instance)
        if c is None:
            raise LocalError(
                404,
                "unknown_container",
                "instance",
                f"{service} instance {instance} is not attached here",
            )
        return jsonify(_container_view(agent, c, with_instance_ips=False))

    @app.get("/api/v1/services")
    def services():
        return jsonify(services=[s.to_dict() for s in agent.services()])

    @app.get("/api/v1/health")
    def health():
        flows, groups = agent.counts()
        data = {
            "node": agent.cfg.node_name,
            "node_ip": agent.cfg.node_ip,
            "desired_flows": flows,
            "desired_groups": groups,
            "containers": len(agent.list_containers()),
            "services": len(agent.services()),
        }
        data.update(status() if status else {})
        return jsonify(data)

    return app


def _body() -> dict:
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise LocalError(400, "malformed_json", "body", f"not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise LocalError(400, "bad_request", "body", "must be a JSON object")
    return body


def _field(body: dict, name: str, kind: type, required: bool = True):
    if name not in body or body[name] is None:
        if required:
            raise LocalError(400, "bad_request", name, "required")
        return None
    value = body[name]
    # bool is an int in Python, never in JSON.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LocalError(
            400,
            "bad_request",
            name,
            f"must be {'an integer' if kind is int else 'a string'}, got {json.dumps(value)}",
        )
    return value


def _service_name(body: dict, name: str) -> str:
    value = _field(body, name, str)
    try:
        parse_job_name(value)
    except ModelError as exc:
        raise LocalError(400, "bad_request", name, exc.message) from None
    return value


_OWN_FIELDS = {
    "serviceName": "service",
    "instanceNumber": "instance",
    "portMappings": "port_mappings",
}


def _instance(body: dict, name: str) -> int:
    value = _field(body, name, int)
    if not 0 <= value <= MAX_INSTANCE_NUMBER:
        raise LocalError(400, "bad_request", name, f"must be between 0 and {MAX_INSTANCE_NUMBER}")
    return value


def _container_view(agent: Agent, c: Container, with_instance_ips: bool = True) -> dict:
    data = c.to_dict()
    data["gateway_v4"] = agent.cfg.gateway_v4 if c.namespace_ip else None
    data["gateway_v6"] = agent.cfg.gateway_v6 if c.namespace_ip_v6 else None
    if with_instance_ips:
        port = agent.local_port(c)
        data["instance_ip"], data["instance_ip_v6"] = port.instance_ip, port.instance_ip_v6
    return data


class NodeApiServer:
    """The node API served by waitress on a unix socket (mode 0660), in a thread."""

    def __init__(self, app: Flask, path: str, threads: int = 4):
        from waitress.server import create_server

        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
        _remove_stale_socket(path)
        self.path = path
        self.server = create_server(
            app,
            unix_socket=path,
            unix_socket_perms="660",
            threads=threads,
            clear_untrusted_proxy_headers=True,
        )
        self.thread = threading.Thread(target=self.server.run, name="node-api", daemon=True)

    def start(self) -> None:
        """Start serving."""
        self.thread.start()
        LOG.info("node API listening on %s", self.path)

    def close(self) -> None:
        """Stop serving and remove the socket file."""
        self.server.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on (left by a killed agent); refuse a live one."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another process serves {path}")
