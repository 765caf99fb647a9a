"""Encoded table-query answers, reused while the store's revision stands still."""

from __future__ import annotations

import threading


class Answers:
    """Job documents as JSON per lookup key, valid for exactly one store revision.

    Every change of a service emits a revision in the same transaction, so the answer built
    after reading revision R is right for every later query that reads R again; the first
    query after a change builds it anew. Repeated queries then skip the lookup, the decoding
    and the encoding of the document.

    Limitation: on MongoDB a writer's documents are visible before it moves the revision, and
    a failed writer's are undone after; a query inside that window may keep such a document
    until the next change (without the cache it would have seen it once).
    """

    def __init__(self, size: int = 8192):
        self.size = size
        self._lock = threading.Lock()
        self._revision = -1
        self._entries: dict[str, tuple[str, str, bytes]] = {}

    def get(self, key: str, revision: int) -> tuple[str, str, bytes] | None:
        """``(job id, job name, body)`` cached for ``key`` at ``revision``, or None."""
        with self._lock:
            if revision != self._revision:
                return None
            return self._entries.get(key)

    def put(self, key: str, revision: int, answer: tuple[str, str, bytes]) -> None:
        """Keep ``answer`` for ``key``; a newer revision drops every older answer."""
        with self._lock:
            if revision > self._revision:
                self._revision = revision
                self._entries = {}
            if revision == self._revision and len(self._entries) < self.size:
                self._entries[key] = answer
