"""A WSGI layer that answers a manager's hot routes without Flask's per-request machinery."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flask import Flask
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.wrappers import Request

from oaknet.auth import AuthError, Principal, authorize
from oaknet.web import FAST_ERROR, view_roles

LOG = logging.getLogger(__name__)

FAST_ROUTES = "oaknet_fast_routes"  # app.extensions key: the app's list of FastRoute
# For comparisons: "off" (or "0") sends every request through Flask; "threads" keeps the fast
# lane but runs nothing on the server loop's thread; anything else, or unset, is the default.
FAST_LANE_ENV = "OAKNET_SERVER_FAST_LANE"
INLINE_OUTBUF_MAX = 1 << 20  # bytes unsent on a connection above which nothing runs inline

Answer = tuple[bytes, list[tuple[str, str]]]


@dataclass(frozen=True)
class FastRoute:
    """A GET route whose successful answer skips Flask's request machinery.

    The path is ``prefix`` + one non-empty segment without '/' + ``suffix`` (``segment``
    False: exactly ``prefix``). ``answer(principal, segment, environ)`` runs in the app's
    context and returns the JSON body and extra headers of a 200; whatever it raises is
    raised again inside the Flask app, so errors get the view's status, headers and body.
    ``inline(principal, segment)`` says the answer neither waits nor writes: the server
    loop may then run it on its own thread, without a hand-off to a worker thread.
    """

    endpoint: str
    prefix: str
    suffix: str
    answer: Callable[[Principal | None, str, dict], Answer]
    segment: bool = True
    inline: Callable[[Principal | None, str], bool] | None = None


class FastLane:
    """A WSGI layer in front of a manager's Flask app for its hot routes (``FAST_ROUTES``).

    The same authentication, roles and route functions decide as in Flask; what is skipped
    is the request context, URL routing, hooks and the response object. Anything it does
    not match exactly (other methods, paths, non-ASCII) goes to Flask unchanged.
    """

    def __init__(self, app: Flask, routes: Iterable[FastRoute], inline: bool = True):
        self.app = app
        self.principals = app.extensions["oaknet_principals"]
        self.metrics = app.extensions["oaknet_metrics"]
        self.mimetype = app.json.mimetype
        self.inline = inline
        self.routes = []
        for route in routes:
            rule = next(app.url_map.iter_rules(route.endpoint)).rule
            roles = view_roles(app.view_functions[route.endpoint])
            self.routes.append((route, rule, roles))

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Answer a hot route's request, or hand the request to Flask."""
        found = self._match(environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", ""))
        if found is None:
            return self.app(environ, start_response)
        route, rule, roles, arg = found
        started = time.monotonic()
        who = None
        try:
            with self.app.app_context():
                if roles is not None:
                    who = self.principals.authenticate(environ.get("HTTP_AUTHORIZATION"))
                    authorize(who, roles)
                body, extra = route.answer(who, arg, environ)
        except Exception as exc:  # noqa: BLE001 - Flask answers it, as for the view
            environ[FAST_ERROR] = exc
            return self.app(environ, start_response)
        headers = [("Content-Type", self.mimetype), ("Content-Length", str(len(body))), *extra]
        start_response("200 OK", headers)
        self.metrics.observe("GET", rule, 200, time.monotonic() - started)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug(
                "GET %s -> 200 (%s, fast)", environ["PATH_INFO"], who.subject if who else "-"
            )
        return [body]

    def runs_inline(self, method: str, path: str, authorization: str | None) -> bool:
        """Whether a request may be answered on the server loop's thread (never waits)."""
        found = self._match(method, path) if self.inline else None
        if found is None or found[0].inline is None:
            return False
        route, _rule, roles, arg = found
        try:
            with self.app.app_context():
                who = None
                if roles is not None:
                    who = self.principals.authenticate(authorization)
                    authorize(who, roles)
                return route.inline(who, arg)
        except AuthError:
            return False  # a worker thread answers it, with the error

    def _match(self, method: str | None, path: str) -> tuple | None:
        if method != "GET" or not path.isascii():
            return None
        for route, rule, roles in self.routes:
            if not route.segment:
                if path == route.prefix:
                    return route, rule, roles, ""
                continue
            if path.startswith(route.prefix) and path.endswith(route.suffix):
                arg = path[len(route.prefix) : len(path) - len(route.suffix)]
                if arg and "/" not in arg:
                    return route, rule, roles, arg
        return None


def query_args(environ: dict) -> ImmutableMultiDict:
    """The request's query arguments, parsed as Flask's ``request.args``."""
    return Request(environ).args


def wsgi_app(app: Flask) -> Callable:
    """What the server runs: the app behind its fast lane, unless it has none or it is off."""
    routes = app.extensions.get(FAST_ROUTES)
    mode = os.environ.get(FAST_LANE_ENV, "1")
    if not routes or mode in ("0", "off"):
        return app
    return FastLane(app, routes, inline=mode != "threads")


def inline_check(wsgi: Callable) -> Callable[[object], bool] | None:
    """For waitress's task dispatcher: whether a connection's next request may run inline."""
    if not isinstance(wsgi, FastLane) or not wsgi.inline:
        return None

    def check(channel) -> bool:
        request = channel.requests[0]
        if request.error or channel.total_outbufs_len > INLINE_OUTBUF_MAX:
            return False  # errors, and a client that does not read its answers, use a worker
        return wsgi.runs_inline(
            request.command, request.path, request.headers.get("AUTHORIZATION")
        )

    return check
