"""The operations routes every manager serves openly: health, Prometheus metrics, OpenAPI."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from oaknet import web
from oaknet.feed import Feed


def ops_blueprint(
    name: str, title: str, health: Callable[[], dict], description: str | None = None
) -> Blueprint:
    """A blueprint with /api/health (``health()``'s answer), /metrics and /api/openapi.json.

    The health route takes its description from ``health``'s docstring.
    """
    ops = Blueprint(name, __name__)

    @ops.get("/api/health", endpoint="health")
    @web.public
    def health_route() -> Response:
        return jsonify(health())

    health_route.__doc__ = health.__doc__

    @ops.get("/metrics")
    @web.public
    def metrics() -> Response:
        """Prometheus metrics."""
        return metrics_response(current_app)

    @ops.get("/api/openapi.json")
    @web.public
    def openapi() -> Response:
        """This API's OpenAPI document."""
        spec = openapi_document(current_app, title, "1")
        if description:
            spec["info"]["description"] = description
        return jsonify(spec)

    return ops


def feed_health(feed: Feed) -> dict:
    """The health fields every manager reports: its store, the store's revision, watchers."""
    return {
        "store": feed.store.description,
        "revision": feed.store.head(),
        "watchers": feed.watchers,
    }


def metrics_response(app: Flask) -> Response:
    """The /metrics response of ``app``."""
    return Response(
        app.extensions["oaknet_metrics"].render(), mimetype="text/plain; version=0.0.4"
    )


def openapi_document(app: Flask, title: str, version: str) -> dict:
    """An OpenAPI 3 document built from the url_map, view docstrings and declared roles."""
    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        doc = (view.__doc__ or "").strip().splitlines()
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "operationId": f"{rule.endpoint}_{method.lower()}",
                "summary": doc[0] if doc else rule.endpoint,
                "parameters": [
                    {"name": a, "in": "path", "required": True, "schema": {"type": "string"}}
                    for a in sorted(rule.arguments)
                ],
                "responses": {
                    "200": {"description": "success"},
                    "4XX": {"$ref": "#/components/responses/Error"},
                },
            }
            roles = web.view_roles(view)
            if roles is None:
                op["security"] = []
            else:
                op["x-roles"] = list(roles)
            paths.setdefault(path, {})[method.lower()] = op
    error_schema = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "detail": {"type": "string"},
            "field": {"type": "string", "nullable": True},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "error",
                    "content": {"application/json": {"schema": error_schema}},
                }
            },
        },
        "security": [{"bearer": []}],
    }
