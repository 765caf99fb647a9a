"""The reports a node owes its cluster manager, sent in order by one thread and kept on disk.

A report the cluster cannot take now (unreachable, 5xx, node not registered) stays first in
line and is retried with backoff; one it refuses for good (4xx) is logged and dropped, so a
bad report never blocks the ones behind it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from oaknet.client import ClientError, Unavailable

LOG = logging.getLogger(__name__)

MAX_BACKOFF_FACTOR = 8


@dataclass
class Report:
    """One call the cluster has to hear: ``op`` is deployed, undeployed or forget."""

    op: str
    body: dict
    done: threading.Event = field(default_factory=threading.Event, compare=False)
    tried: threading.Event = field(default_factory=threading.Event, compare=False)

    def to_dict(self) -> dict:
        """The persisted form."""
        return {"op": self.op, "body": self.body}


def retryable(exc: Exception) -> bool:
    """Whether a failed report should be sent again later (rather than dropped)."""
    if isinstance(exc, Unavailable):
        return True
    return isinstance(exc, ClientError) and (
        exc.status >= 500 or (exc.status == 404 and exc.field == "node_id")
    )


class Outbox:
    """Ordered reports with one sender thread; ``send`` does the call, ``changed`` persists."""

    def __init__(
        self,
        saved: list[dict],
        send: Callable[[Report], None],
        failed: Callable[[str, Exception], None],
        changed: Callable[[], None],
        retry_s: float,
    ):
        self._items = [Report(r["op"], r["body"]) for r in saved]
        self._send = send
        self._failed = failed
        self._changed = changed
        self._retry_s = retry_s
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def start(self) -> None:
        """Start the sender thread."""
        self._thread = threading.Thread(target=self._run, name="cluster-report", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sender (a call in flight is abandoned; the report stays saved)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def put(self, report: Report) -> Report:
        """Queue ``report`` behind the others."""
        with self._cond:
            self._items.append(report)
            self._cond.notify_all()
        self._changed()
        return report

    def cancel(self, op: str, body: dict) -> None:
        """Drop queued reports equal to (``op``, ``body``) that are not being sent."""
        with self._cond:
            keep = [r for r in self._items[:1]]
            keep += [r for r in self._items[1:] if (r.op, r.body) != (op, body)]
            self._items = keep

    def saved(self) -> list[dict]:
        """The queued reports in their persisted form."""
        with self._cond:
            return [r.to_dict() for r in self._items]

    def _run(self) -> None:
        backoff = self._retry_s
        while not self._stop.is_set():
            with self._cond:
                while not self._items and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                report = self._items[0]
            try:
                self._send(report)
            except (ClientError, Unavailable) as exc:
                if retryable(exc):
                    report.tried.set()
                    self._failed(report.op, exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self._retry_s * MAX_BACKOFF_FACTOR)
                    continue
                if report.op == "undeployed" and exc.status == 404:
                    # The orchestrator undeployed it at the root first: nothing left to tell.
                    LOG.info("cluster no longer knows %s: nothing to report", report.body)
                else:
                    LOG.warning("cluster refused %s %s: %s", report.op, report.body, exc)
            backoff = self._retry_s
            with self._cond:
                self._items = [r for r in self._items if r is not report]
            report.done.set()
            report.tried.set()
            self._changed()
