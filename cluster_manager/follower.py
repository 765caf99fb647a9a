"""Background work: follow the root's watch feed, refresh pushed services, retry removals.

The follower resumes from the root revision stored with the cache, so after a restart it
neither misses nor re-applies a change; when the root answers with a resync it replaces the
cache with the root's state. A push from the root (``POST /api/net/job/update``) only asks the
refresher for an early fetch: the feed alone keeps the cache right.
"""

from __future__ import annotations

import logging
import threading

from cluster_manager.config import RootLinkConfig
from cluster_manager.rootlink import ClientError, RootLink, RootUnregistered, Unavailable
from cluster_manager.table import Table
from oaknet.store import StoreError
from oaknet.web import ApiError

LOG = logging.getLogger(__name__)

# What can go wrong in one round; KeyError/TypeError/ValueError are a malformed root answer,
# retried (and shown in health) rather than ending the thread.
FAILURES = (
    ClientError,
    Unavailable,
    RootUnregistered,
    StoreError,
    ApiError,
    KeyError,
    TypeError,
    ValueError,
)


class Refresher:
    """Fetches services from the root on request, on its own thread (deduplicated)."""

    def __init__(self, table: Table):
        self.table = table
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="root-refresher", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        """Stop after the fetch under way."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=wait)

    def request(self, name: str) -> None:
        """Fetch ``name`` from the root soon."""
        with self._lock:
            self._pending.add(name)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                names, self._pending = sorted(self._pending), set()
            for name in names:
                if self._stop.is_set():
                    return
                try:
                    self.table.refresh(name)
                except FAILURES as exc:
                    LOG.warning("refresh of %s from the root failed: %s", name, exc)


class RootFollower:
    """Long-polls the root's feed for this cluster's interests and applies it to the cache."""

    def __init__(
        self,
        table: Table,
        root: RootLink,
        cfg: RootLinkConfig,
        refresher: Refresher,
        server_port: int,
    ):
        self.table = table
        self.cache = table.cache
        self.root = root
        self.cfg = cfg
        self.refresher = refresher
        self.server_port = server_port
        self.connected = False
        self.last_error: str | None = None
        self.applied = 0
        self.resyncs = 0
        self._registered = cfg.advertise_address is None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="root-follower", daemon=True)

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def stop(self, wait: float = 0.1) -> None:
        """Stop; an open long-poll is left to end on its own (the thread is a daemon).

        ``wait`` covers a step that is not a long-poll (an apply takes milliseconds); waiting
        out the root's long-poll would hold up the manager's exit by up to its timeout.

        A late answer is harmless: it is checked against the stop flag, and every write is
        guarded by revision, so applying a change twice changes nothing.
        """
        self._stop.set()
        self._thread.join(timeout=wait)
        self.connected = False

    def status(self) -> dict:
        """What health shows about the root link."""
        return {
            "url": self.cfg.url,
            "connected": self.connected,
            "revision": self.cache.position(),
            "last_error": self.last_error,
            "changes_applied": self.applied,
            "resyncs": self.resyncs,
        }

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._housekeeping()
                # The first poll after (re)connecting returns at once: the cache catches up
                # and health shows the link up without waiting out a long poll.
                timeout = self.cfg.watch_timeout if self.connected else 0
                out = self.root.watch(self.cache.position(), timeout)
                if self._stop.is_set():
                    break
                self._apply(out)
            except FAILURES as exc:
                failures += 1
                self._failed(exc, failures)
                delay = self.cfg.backoff * 2 ** min(failures - 1, 16)
                self._stop.wait(min(self.cfg.max_backoff, delay))
                continue
            if not self.connected:
                LOG.info(
                    "following the root's feed at %s from revision %d",
                    self.cfg.url,
                    self.cache.position(),
                )
            self.connected, self.last_error, failures = True, None, 0

    def _housekeeping(self) -> None:
        if not self._registered:
            port = self.cfg.advertise_port or self.server_port
            self.root.register(self.cfg.advertise_address, port)
            self._registered = True
        if self.cache.pending_removals():
            self.table.send_removals()

    def _apply(self, out: dict) -> None:
        if not isinstance(out, dict) or not isinstance(out.get("revision"), int):
            raise Unavailable("the root's watch answer has no revision")
        if out.get("resync"):
            missing = self.cache.apply_resync(out.get("services") or [], out["revision"])
            self.resyncs += 1
            for name in missing:
                # The root may have lost this cluster's interest: asking again restores it.
                self.refresher.request(name)
            return
        changes = out.get("changes") or []
        applied = self.cache.apply_changes(changes, out["revision"])
        self.applied += applied
        if changes:
            LOG.debug(
                "root feed: %d changes, %d applied, now at revision %d",
                len(changes),
                applied,
                out["revision"],
            )

    def _failed(self, exc: Exception, failures: int) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ClientError) and exc.status in (401, 403):
            LOG.error("the root refuses this cluster's token (%s); check root.token", exc)
        elif isinstance(exc, (KeyError, TypeError, ValueError)):
            LOG.error("the root's feed sent something this cluster cannot apply: %s", exc)
        elif self.connected or failures == 1:
            LOG.warning("root feed at %s unavailable: %s", self.cfg.url, self.last_error)
        self.connected = False
