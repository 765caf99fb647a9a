"""Flask helpers shared by the managers: JSON errors, auth per route, body checks, metrics."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from oaknet.auth import Authenticator, AuthError, Principal, authorize
from oaknet.config import AuthConfig
from oaknet.model import ModelError
from oaknet.pools import AddressTaken, PoolError, PoolExhausted
from oaknet.store import StoreBusy, StoreError

LOG = logging.getLogger(__name__)

_ROLES_ATTR = "_oaknet_roles"
_PUBLIC_ATTR = "_oaknet_public"
FAST_ERROR = "oaknet.fast_error"  # WSGI environ key: the fast lane's exception, for Flask


class ApiError(Exception):
    """An HTTP error with a JSON body ``{"error", "detail", "field"}``."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field


def bad_request(detail: str, field: str | None = None) -> ApiError:
    """A 400 naming the offending field."""
    return ApiError(400, "invalid input", detail, field)


def not_found(detail: str, field: str | None = None) -> ApiError:
    """A 404."""
    return ApiError(404, "not found", detail, field)


def conflict(detail: str, field: str | None = None) -> ApiError:
    """A 409: the request contradicts the current state."""
    return ApiError(409, "conflict", detail, field)


def requires(*roles: str) -> Callable:
    """Mark a view as needing a bearer token with one of ``roles`` (put it under @route)."""

    def mark(view: Callable) -> Callable:
        setattr(view, _ROLES_ATTR, tuple(roles))
        return view

    return mark


def public(view: Callable) -> Callable:
    """Mark a view as open without a token (health, metrics, API description only)."""
    setattr(view, _PUBLIC_ATTR, True)
    return view


def principal() -> Principal:
    """The authenticated caller of the current request."""
    return g.oaknet_principal


def json_body() -> dict:
    """The request's JSON object; ApiError 400 when it is missing, malformed or not an object."""
    data = request.get_json(force=True, silent=True, cache=True)
    if data is None:
        if not request.get_data(cache=True):
            raise bad_request("the request needs a JSON body")
        raise bad_request("the body is not valid JSON")
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


_MISSING = object()


def field(
    body: dict,
    name: str,
    kind: type | tuple[type, ...],
    required: bool = True,
    default: Any = None,
    where: str | None = None,
) -> Any:
    """``body[name]`` checked to be of ``kind`` (bool is never an int); 400 naming it otherwise."""
    label = f"{where}.{name}" if where else name
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise bad_request(f"{label} is required", label)
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise bad_request(f"{label} must be {_kind_name(kinds)}, not a boolean", label)
    if not isinstance(value, kinds):
        raise bad_request(f"{label} must be {_kind_name(kinds)}", label)
    return value


def int_field(
    body: dict,
    name: str,
    required: bool = True,
    low: int | None = None,
    high: int | None = None,
    where: str | None = None,
) -> int | None:
    """An integer field (a string of digits is accepted, as oakestra sends some as text)."""
    label = f"{where}.{name}" if where else name
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(f"{label} is required", label)
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,12}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{label} must be an integer", label)
    if low is not None and value < low:
        raise bad_request(f"{label} must be >= {low}", label)
    if high is not None and value > high:
        raise bad_request(f"{label} must be <= {high}", label)
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        str: "a string",
        dict: "an object",
        list: "a list",
        float: "a number",
        bool: "a boolean",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def manager_app(name: str, auth: AuthConfig, max_body: int) -> tuple[Flask, Metrics]:
    """A manager's Flask app wired by ``install`` (JSON keys kept in order), and its metrics."""
    app = Flask(name)
    app.json.sort_keys = False
    metrics = Metrics()
    install(app, Authenticator(auth), metrics, max_body=max_body)
    return app, metrics


def install(
    app: Flask, authenticator: Authenticator, metrics: Metrics | None = None, max_body: int = 65536
) -> None:
    """Wire auth (deny by default), JSON errors, body limit and request metrics into ``app``."""
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.extensions["oaknet_auth"] = authenticator
    metrics = metrics or Metrics()
    app.extensions["oaknet_metrics"] = metrics

    principals = PrincipalCache(authenticator)
    app.extensions["oaknet_principals"] = principals

    @app.before_request
    def _authenticate() -> None:
        g.oaknet_started = time.monotonic()
        # A request the fast lane (oaknet.serving.FastLane) began and failed: its error is
        # answered here, by the same handlers as the view's would be, and nothing runs twice.
        failed = request.environ.pop(FAST_ERROR, None)
        if failed is not None:
            raise failed
        if request.endpoint is None:
            return  # routing failed: the 404/405 handler answers
        view = current_app.view_functions[request.endpoint]
        if getattr(view, _PUBLIC_ATTR, False):
            return
        # A view that forgot to declare its roles is admin-only rather than open.
        roles = getattr(view, _ROLES_ATTR, None) or ("admin",)
        who = principals.authenticate(request.headers.get("Authorization"))
        authorize(who, roles)
        g.oaknet_principal = who

    @app.after_request
    def _account(response: Response) -> Response:
        started = g.get("oaknet_started")
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            metrics.observe(
                request.method, endpoint, response.status_code, time.monotonic() - started
            )
        if LOG.isEnabledFor(logging.DEBUG):  # reading the request proxies costs even unlogged
            who = g.get("oaknet_principal")
            LOG.debug(
                "%s %s -> %d (%s)",
                request.method,
                request.path,
                response.status_code,
                who.subject if who else "-",
            )
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.error, exc.detail, exc.field)

    @app.errorhandler(AuthError)
    def _auth_error(exc: AuthError):
        resp = error_response(
            exc.status, "unauthorized" if exc.status == 401 else "forbidden", exc.detail
        )
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="oaknet"'
        return resp

    @app.errorhandler(ModelError)
    def _model_error(exc: ModelError):
        return error_response(400, "invalid input", exc.message, exc.field)

    @app.errorhandler(PoolError)
    def _pool_error(exc: PoolError):
        if isinstance(exc, PoolExhausted):
            return error_response(409, "address pool exhausted", str(exc), exc.field)
        if isinstance(exc, AddressTaken):
            return error_response(409, "conflict", str(exc), exc.field)
        return error_response(400, "invalid input", str(exc), exc.field)

    @app.errorhandler(StoreBusy)
    def _busy(exc: StoreBusy):
        resp = error_response(503, "busy", str(exc))
        resp.headers["Retry-After"] = "1"
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 413:
            return error_response(
                413, "body too large", f"request bodies are limited to {max_body} bytes"
            )
        return error_response(
            exc.code or 500, (exc.name or "error").lower(), exc.description or ""
        )

    @app.errorhandler(StoreError)
    def _store_error(exc: StoreError):
        LOG.error("store failure on %s %s: %s", request.method, request.path, exc)
        return error_response(503, "store unavailable", str(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        LOG.exception("unexpected failure on %s %s", request.method, request.path)
        return error_response(500, "internal error", f"{type(exc).__name__}; see the server log")


def error_response(status: int, error: str, detail: str, field: str | None = None) -> Response:
    """The JSON error body every endpoint uses."""
    resp = jsonify({"error": error, "detail": detail, "field": field})
    resp.status_code = status
    return resp


class PrincipalCache:
    """Remembers the principal of each valid JWT until it expires: verified once, not per call.

    Verifying an HS256 JWT costs about as much as the rest of a table query (RS256 far more);
    a cluster or node sends the same token for hours. Only digests are kept, as the
    authenticator does. Static tokens are a dictionary lookup already and are not cached.
    """

    def __init__(self, authenticator: Authenticator, size: int = 4096):
        self.authenticator = authenticator
        self.size = size
        self._jwts: dict[bytes, tuple[Principal, float]] = {}

    def authenticate(self, header: str | None) -> Principal:
        """The principal of an Authorization header value, or AuthError(401)."""
        token = (header or "").partition(" ")[2].strip()
        if token.count(".") != 2:
            return self.authenticator.authenticate(header)
        digest = hashlib.sha256(header.encode("utf-8", "surrogatepass")).digest()
        hit = self._jwts.get(digest)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        who = self.authenticator.authenticate(header)
        if who.method == "jwt":
            # The signature and claims were just verified; only the expiry is read again.
            exp = jwt.decode(token, options={"verify_signature": False})["exp"]
            if len(self._jwts) >= self.size:
                self._jwts.clear()
            self._jwts[digest] = (who, float(exp) + self.authenticator.cfg.jwt_leeway)
        return who


class Metrics:
    """Prometheus text metrics: request counters and latency, plus gauges read on scrape."""

    def __init__(self, prefix: str = "oaknet"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._seconds: dict[tuple[str, str], list[float]] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float | dict[str, float]]]] = {}

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one request."""
        with self._lock:
            key = (method, endpoint, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            acc = self._seconds.setdefault((method, endpoint), [0.0, 0])
            acc[0] += seconds
            acc[1] += 1

    def gauge(
        self, name: str, help_text: str, read: Callable[[], float | dict[str, float]]
    ) -> None:
        """Register a gauge; ``read`` returns a value or {label value: value} (label "pool")."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        """The metrics in Prometheus text format."""
        p = self.prefix
        lines = [
            f"# HELP {p}_http_requests_total HTTP requests by route and status.",
            f"# TYPE {p}_http_requests_total counter",
        ]
        with self._lock:
            for (method, endpoint, status), n in sorted(self._requests.items()):
                lines.append(
                    f'{p}_http_requests_total{{method="{method}",route="{endpoint}",'
                    f'status="{status}"}} {n}'
                )
            lines.append(f"# TYPE {p}_http_request_seconds summary")
            for (method, endpoint), (total, count) in sorted(self._seconds.items()):
                labels = f'method="{method}",route="{endpoint}"'
                lines.append(f"{p}_http_request_seconds_sum{{{labels}}} {total:.6f}")
                lines.append(f"{p}_http_request_seconds_count{{{labels}}} {count}")
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines += [f"# HELP {p}_{name} {help_text}", f"# TYPE {p}_{name} gauge"]
            try:
                value = read()
            except (StoreError, OSError) as exc:
                LOG.warning("metric %s unavailable: %s", name, exc)
                continue
            if isinstance(value, dict):
                for label, v in sorted(value.items()):
                    lines.append(f'{p}_{name}{{pool="{label}"}} {v}')
            else:
                lines.append(f"{p}_{name} {value}")
        return "\n".join(lines) + "\n"


def view_roles(view: Callable) -> tuple[str, ...] | None:
    """The roles a view declared (None for public views)."""
    if getattr(view, _PUBLIC_ATTR, False):
        return None
    return getattr(view, _ROLES_ATTR, None) or ("admin",)
