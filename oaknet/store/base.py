"""The store port: documents with index terms, atomic claims and a revisioned change log."""

from __future__ import annotations

import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

LOG = logging.getLogger(__name__)

PUT = "put"
DELETE = "delete"


class StoreError(RuntimeError):
    """The database failed or refused an operation."""


class StoreBusy(StoreError):
    """Another writer held the store longer than the configured wait."""


@dataclass(frozen=True)
class Change:
    """One entry of the change feed: ``op`` on the document ``kind``/``key`` at ``revision``.

    ``subject`` is what watchers filter on (a service name, a node id); ``doc`` is the whole
    document after the change (for a delete, the last version), so applying a change is
    idempotent.
    """

    revision: int
    kind: str
    key: str
    op: str
    subject: str
    doc: dict | None
    at: float

    def to_dict(self) -> dict:
        """A JSON-ready dict of the change."""
        return asdict(self)


class Reader(ABC):
    """Read access to documents; a kind is a collection, a term a secondary-index entry."""

    @abstractmethod
    def get(self, kind: str, key: str) -> dict | None:
        """The document ``kind``/``key``, or None."""

    @abstractmethod
    def find(self, kind: str, term: str) -> list[tuple[str, dict]]:
        """(key, doc) of every ``kind`` document indexed under ``term``, by key (indexed)."""

    @abstractmethod
    def items(self, kind: str) -> list[tuple[str, dict]]:
        """(key, doc) of every document of ``kind``, by key."""

    @abstractmethod
    def keys(self, kind: str) -> list[str]:
        """The keys of every document of ``kind``, by key."""

    @abstractmethod
    def count(self, kind: str) -> int:
        """How many documents of ``kind`` exist."""


class Tx(Reader):
    """One atomic, serialised unit of change; obtained from ``Store.transaction()``."""

    @abstractmethod
    def put(self, kind: str, key: str, doc: dict, terms: Iterable[str] = ()) -> None:
        """Create or replace a document and its index terms."""

    @abstractmethod
    def create(self, kind: str, key: str, doc: dict, terms: Iterable[str] = ()) -> bool:
        """Insert the document only if ``kind``/``key`` is absent; True when inserted."""

    @abstractmethod
    def delete(self, kind: str, key: str) -> bool:
        """Remove a document and its terms; True when it existed."""

    @abstractmethod
    def emit(self, kind: str, key: str, op: str, subject: str, doc: dict | None) -> int:
        """Append a change to the feed; returns its revision (unique, increasing)."""


class Store(Reader):
    """A database holding documents and the change feed, shared by any number of processes."""

    description = "store"

    def __init__(self) -> None:
        self._listeners: list[Callable[[int], None]] = []
        self._local = threading.local()

    @abstractmethod
    def _begin(self) -> contextlib.AbstractContextManager[Tx]:
        """The adapter's transaction; yields a Tx and commits on success."""

    @abstractmethod
    def head(self) -> int:
        """The latest revision ever emitted (0 when none)."""

    @abstractmethod
    def compacted(self) -> int:
        """Every revision up to this one was dropped from the feed."""

    @abstractmethod
    def changes(self, since: int, limit: int = 1000) -> list[Change]:
        """Changes with revision > ``since``, oldest first, at most ``limit``."""

    @abstractmethod
    def compact(self, keep: int) -> int:
        """Drop all but the newest ``keep`` changes; returns the new ``compacted()``."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """Run a block as one serialised transaction; listeners hear the emitted head after.

        A transaction opened inside another on the same thread joins the outer one.
        """
        outer = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        try:
            with self._begin() as tx:
                self._local.tx = tx
                yield tx
                emitted = getattr(tx, "emitted", 0)
        finally:
            self._local.tx = None
        if emitted:
            for listener in list(self._listeners):
                listener(emitted)

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(revision)`` after each committed transaction that emitted changes."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[int], None]) -> None:
        """Stop calling ``callback``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)
