"""The change feed: long-poll watchers woken by a condition variable, fed from the store.

One Feed per process. Commits of this process wake watchers at once (store listener); a poller
thread notices revisions written by other processes on the same store. Recent changes are kept in
memory, so a hundred watchers waking on one change cost one store read, not a hundred.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from oaknet.config import FeedConfig
from oaknet.store import Change, Store, StoreError

LOG = logging.getLogger(__name__)

MAX_BATCH = 1000


@dataclass
class WatchResult:
    """What a watcher gets: changes after its revision, or ``resync`` (then ``changes`` is empty).

    ``revision`` is what the watcher passes as ``since`` next time; it may be past the last
    change returned when later changes did not match the watcher's filter.
    """

    revision: int
    changes: list[Change] = field(default_factory=list)
    resync: bool = False


class Feed:
    """Serves ``wait(since, timeout, match)`` over a store's change log."""

    def __init__(
        self,
        store: Store,
        poll_interval: float = 0.2,
        keep: int = 10000,
        compact_interval: float = 30.0,
        cache_size: int = 4096,
    ):
        self.store = store
        self.poll_interval = poll_interval
        self.keep = keep
        self.compact_interval = compact_interval
        self._cond = threading.Condition()
        self._recent: deque[Change] = deque(maxlen=cache_size)
        self._encoded: OrderedDict[int, bytes] = OrderedDict()
        self._encoded_lock = threading.Lock()
        self._cache_size = cache_size
        self._head = store.head()
        self._compacted = store.compacted()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watchers = 0
        store.add_listener(self._on_commit)

    @classmethod
    def from_config(cls, store: Store, cfg: FeedConfig) -> Feed:
        """The feed of ``store`` with the configured polling, retention and compaction."""
        return cls(
            store,
            poll_interval=cfg.poll_interval,
            keep=cfg.keep,
            compact_interval=cfg.compact_interval,
        )

    @property
    def head(self) -> int:
        """The newest revision this process has seen."""
        return self._head

    def start(self) -> None:
        """Start the poller thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="oaknet-feed", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the poller and release every waiting watcher."""
        self._stop.set()
        self.store.remove_listener(self._on_commit)
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def wait(
        self,
        since: int,
        timeout: float,
        match: Callable[[Change], bool] | None = None,
        select: Callable[[list[Change]], list[Change]] | None = None,
    ) -> WatchResult:
        """Changes after ``since`` that ``match`` accepts, waiting up to ``timeout`` for one.

        ``select`` filters a whole batch instead (read a watcher's interests once per batch);
        it runs after the batch's changes were committed, so interests registered before a
        change are always seen.
        """
        if select is None:

            def select(batch: list[Change]) -> list[Change]:
                return [c for c in batch if match is None or match(c)]

        self._refresh()
        if since > self._head or since < self._compacted:
            LOG.debug(
                "watcher at revision %d resyncs (head %d, compacted %d)",
                since,
                self._head,
                self._compacted,
            )
            return WatchResult(revision=self._head, resync=True)
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self.watchers += 1
        try:
            while True:
                seen, found = self._collect(since, select)
                if found:
                    return WatchResult(revision=seen, changes=found)
                since = seen
                with self._cond:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._stop.is_set():
                        return WatchResult(revision=since)
                    if self._head <= since:
                        self._cond.wait(remaining)
                if since < self._compacted:
                    return WatchResult(revision=self._head, resync=True)
        finally:
            with self._cond:
                self.watchers -= 1

    def change_json(self, change: Change) -> bytes:
        """The JSON of ``change``, encoded once and shared by every watcher that sends it."""
        with self._encoded_lock:
            found = self._encoded.get(change.revision)
        if found is not None:
            return found
        data = json.dumps(change.to_dict(), separators=(",", ":")).encode()
        with self._encoded_lock:
            self._encoded[change.revision] = data
            while len(self._encoded) > self._cache_size:
                self._encoded.popitem(last=False)
        return data

    # -- internals ---------------------------------------------------------------------------

    def _collect(
        self, since: int, select: Callable[[list[Change]], list[Change]]
    ) -> tuple[int, list]:
        """(last revision looked at, matching changes after ``since``), at most MAX_BATCH."""
        with self._cond:
            head = self._head
            oldest = self._recent[0].revision if self._recent else head + 1
            if since + 1 >= oldest or since >= head:
                batch = [c for c in self._recent if c.revision > since][:MAX_BATCH]
            else:
                batch = None
        if batch is None:
            # Older than the memory cache: read from the store (a slow watcher catching up).
            batch = self.store.changes(since, MAX_BATCH)
        if not batch:
            # Everything up to head is loaded; missing revisions are gaps of undone writes.
            return max(since, head), []
        last = batch[-1].revision
        found = select(batch)
        return last, found

    def _on_commit(self, revision: int) -> None:
        self._refresh()

    def _refresh(self) -> None:
        """Load changes newer than the known head into memory and wake the watchers."""
        try:
            head = self.store.head()
        except StoreError:
            LOG.exception("feed cannot read the store head")
            return
        if head <= self._head:
            return
        with self._cond:
            if head <= self._head:
                return
            start = self._head
            while start < head:
                batch = self.store.changes(start, MAX_BATCH)
                if not batch:
                    break
                self._recent.extend(batch)
                start = batch[-1].revision
            self._head = max(head, start)
            self._cond.notify_all()

    def _poll(self) -> None:
        last_compact = time.monotonic()
        while not self._stop.wait(self.poll_interval):
            try:
                self._refresh()
                if time.monotonic() - last_compact >= self.compact_interval:
                    last_compact = time.monotonic()
                    self.compact()
                else:
                    self._compacted = self.store.compacted()
            except StoreError:
                LOG.exception("feed poll failed")

    def compact(self) -> int:
        """Drop changes older than the newest ``keep``; returns the compacted revision."""
        done = self.store.compact(self.keep)
        with self._cond:
            self._compacted = done
            while self._recent and self._recent[0].revision <= done:
                self._recent.popleft()
        return done
