"""HTTP client for the managers' APIs: bearer token, timeouts, retries and clear errors."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import requests

LOG = logging.getLogger(__name__)

RETRY_STATUS = (502, 503, 504)


class ClientError(Exception):
    """The server answered with an error; fields mirror the JSON error body."""

    def __init__(
        self, method: str, url: str, status: int, error: str, detail: str, field: str | None = None
    ):
        super().__init__(f"{method} {url} -> {status} {error}: {detail}")
        self.method = method
        self.url = url
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field


class Unavailable(Exception):
    """The server could not be reached (or kept answering 502/503/504) after all retries."""


class Client:
    """Calls one manager at ``base_url`` (``http://[::1]:10099``) with a bearer token.

    GET/PUT/DELETE are retried on connection errors and 502/503/504 with jittered backoff;
    POST only when the call says ``idempotent=True`` (every oaknet POST that is safe to repeat).
    """

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str] | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 3.0,
        retries: int = 3,
        backoff: float = 0.2,
    ):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()

    def __repr__(self) -> str:
        return f"Client({self.base_url})"

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def get(self, path: str, params: dict | None = None, timeout: float | None = None) -> Any:
        """GET ``path``; the decoded JSON (or text) of a 2xx answer."""
        return self.request("GET", path, params=params, timeout=timeout)

    def post(
        self, path: str, body: Any = None, idempotent: bool = False, timeout: float | None = None
    ) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, body=body, idempotent=idempotent, timeout=timeout)

    def delete(self, path: str, timeout: float | None = None) -> Any:
        """DELETE ``path``."""
        return self.request("DELETE", path, timeout=timeout)

    def watch(
        self, path: str, since: int, timeout: float = 30.0, params: dict | None = None
    ) -> dict:
        """One long-poll of a watch endpoint; the read timeout allows for the server's wait."""
        query = {"since": since, "timeout": timeout, **(params or {})}
        return self.request("GET", path, params=query, timeout=timeout + self.timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict | None = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request with retries; raise ClientError for 4xx/5xx, Unavailable if down."""
        url = self.base_url + path
        retry = method in ("GET", "PUT", "DELETE", "HEAD") if idempotent is None else idempotent
        attempts = 1 + (self.retries if retry else 0)
        last: str = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
            headers = {"Accept": "application/json"}
            token = self._token() if callable(self._token) else self._token
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                resp = self.session.request(
                    method,
                    url,
                    json=body,
                    params=params,
                    headers=headers,
                    timeout=(self.connect_timeout, timeout or self.timeout),
                )
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                LOG.debug(
                    "%s %s failed (attempt %d/%d): %s", method, url, attempt + 1, attempts, last
                )
                continue
            if resp.status_code in RETRY_STATUS and attempt + 1 < attempts:
                last = f"HTTP {resp.status_code}"
                continue
            return _decode(method, url, resp)
        raise Unavailable(f"{method} {url}: {last} (after {attempts} attempts)")


def _decode(method: str, url: str, resp: requests.Response) -> Any:
    try:
        data = resp.json()
    except ValueError:
        data = resp.text
    if resp.status_code >= 400:
        if isinstance(data, dict):
            raise ClientError(
                method,
                url,
                resp.status_code,
                str(data.get("error", "error")),
                str(data.get("detail", data.get("message", ""))),
                data.get("field"),
            )
        raise ClientError(method, url, resp.status_code, "error", str(data)[:500])
    return data
