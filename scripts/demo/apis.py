"""Clients of the demo: manager REST APIs from inside a namespace, node APIs on unix sockets."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from testbed.agents import call

from oaknet.client import Client
from ovs_setup.netns import open_netns, setns


class NetnsThread:
    """One thread that lives in a network namespace; calls run there (their sockets too).

    A network namespace belongs to a thread, not the process, so the demo reaches the
    managers on the testbed's underlay without any address of this machine's own namespace.
    """

    def __init__(self, netns: str):
        self.netns = netns
        self._fd = open_netns(netns)
        self._pool = ThreadPoolExecutor(
            1, thread_name_prefix=f"netns-{netns}", initializer=setns, initargs=(self._fd,)
        )

    def call(self, func, *args, **kwargs) -> Any:
        """Run ``func(*args, **kwargs)`` in the namespace; return its result or raise."""
        return self._pool.submit(func, *args, **kwargs).result()

    def close(self) -> None:
        """Stop the thread."""
        self._pool.shutdown(wait=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ManagerApi:
    """A root or cluster manager's REST API, called from a namespace with a bearer token."""

    def __init__(self, where: NetnsThread, base_url: str, token: str, name: str):
        self.where = where
        self.base_url = base_url
        self.name = name
        self.client = Client(base_url, token=token, timeout=10, retries=2, backoff=0.1)

    def get(self, path: str, **params) -> Any:
        """GET ``path``; the decoded answer."""
        return self.where.call(self.client.get, path, params or None)

    def post(self, path: str, body: Any) -> Any:
        """POST a JSON body to ``path``; the decoded answer."""
        return self.where.call(self.client.post, path, body)

    def delete(self, path: str) -> Any:
        """DELETE ``path``; the decoded answer."""
        return self.where.call(self.client.delete, path)

    def close(self) -> None:
        """Close the pooled connections (in the namespace they were made in)."""
        self.where.call(self.client.close)


class NodeApiError(RuntimeError):
    """The node API answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: dict):
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status = status
        self.body = body


class NodeApi:
    """A node agent's API on its unix socket (what a container runtime talks to)."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict]:
        """One request; (status, decoded JSON body)."""
        return call(self.path, method, path, body, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None) -> dict:
        """One request that must succeed (2xx); its decoded body."""
        status, answer = self.call(method, path, body)
        if status >= 300:
            raise NodeApiError(method, path, status, answer)
        return answer

    def health(self) -> dict:
        """GET /api/v1/health."""
        return self.request("GET", "/api/v1/health")

    def services(self) -> dict[str, dict]:
        """The node's service table by name."""
        answer = self.request("GET", "/api/v1/services")
        return {s["name"]: s for s in answer["services"]}
