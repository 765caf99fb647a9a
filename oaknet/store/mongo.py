"""The production store: MongoDB via pymongo (``mongomock://name`` runs it in memory for tests).

MongoDB transactions need a replica set, so writers serialise on a lease lock document instead:
a writer holds ``meta/lock`` while it changes documents and takes revisions from a counter, which
keeps revisions unique and visible in order across processes. A writer that fails half-way is
undone from its undo log.

Limitation: the lease relies on the writers' clocks roughly agreeing and on no writer stalling
longer than ``store.lease`` while holding it; a process killed mid-transaction leaves its partial
writes (SQLite, with real transactions, has neither limitation).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator

import pymongo
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from oaknet.store.base import Change, Store, StoreBusy, StoreError, Tx

LOG = logging.getLogger(__name__)

# mongomock clients do not share data; one client per name lets two stores (two "processes" of
# a test, or a restarted manager) see the same database.
_MOCK_CLIENTS: dict[str, object] = {}
_MOCK_LOCK = threading.Lock()


def _client(url: str):
    if url.startswith("mongomock://"):
        import mongomock  # test dependency only

        name = url[len("mongomock://") :].split("/")[0] or "default"
        with _MOCK_LOCK:
            if name not in _MOCK_CLIENTS:
                _MOCK_CLIENTS[name] = mongomock.MongoClient()
            return _MOCK_CLIENTS[name], url.split("/", 3)[3] if url.count("/") >= 3 else ""
    parsed = pymongo.uri_parser.parse_uri(url)
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000)
    return client, parsed.get("database") or ""


class MongoStore(Store):
    """Documents in ``docs``, the feed in ``changes``, counters and the lock in ``meta``."""

    def __init__(self, url: str, busy_timeout: float = 10.0, lease: float = 30.0):
        super().__init__()
        client, dbname = _client(url)
        self.description = "mongomock" if url.startswith("mongomock://") else "mongodb"
        self._client = client
        db = client[dbname or "oaknet"]
        self._docs = db["docs"]
        self._changes = db["changes"]
        self._meta = db["meta"]
        self.busy_timeout = busy_timeout
        self.lease = lease
        self._local_lock = threading.RLock()
        try:
            self._docs.create_index([("kind", 1), ("terms", 1)])
            self._docs.create_index([("kind", 1), ("key", 1)], unique=True)
            for name, doc in (
                ("lock", {"holder": None, "expires": 0.0}),
                ("revision", {"value": 0}),
                ("head", {"value": 0}),
                ("compacted", {"value": 0}),
            ):
                with contextlib.suppress(DuplicateKeyError):
                    self._meta.insert_one({"_id": name, **doc})
        except PyMongoError as exc:
            raise StoreError(f"cannot reach MongoDB: {exc}") from exc
        LOG.info("store opened: %s database %s", self.description, db.name)

    # -- transactions ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Tx]:
        # The local lock keeps this process's threads from spinning on the shared lease.
        if not self._local_lock.acquire(timeout=self.busy_timeout):
            raise StoreBusy("another thread held the store too long")
        try:
            holder = self._acquire_lease()
            tx = _MongoTx(self)
            try:
                yield tx
                if tx.emitted:
                    # Watchers read "head", which only moves once the changes are all written.
                    self._meta.update_one({"_id": "head"}, {"$set": {"value": tx.emitted}})
            except BaseException:
                tx.undo()
                raise
            finally:
                self._meta.update_one(
                    {"_id": "lock", "holder": holder}, {"$set": {"holder": None}}
                )
        finally:
            self._local_lock.release()

    def _acquire_lease(self) -> str:
        holder = uuid.uuid4().hex
        deadline = time.monotonic() + self.busy_timeout
        while True:
            now = time.time()
            got = self._meta.find_one_and_update(
                {"_id": "lock", "$or": [{"holder": None}, {"expires": {"$lt": now}}]},
                {"$set": {"holder": holder, "expires": now + self.lease}},
            )
            if got is not None:
                if got.get("holder") is not None:
                    LOG.warning("store lock of a writer that died was taken over")
                return holder
            if time.monotonic() > deadline:
                raise StoreBusy("another process held the store lock too long")
            time.sleep(0.002 + random.random() * 0.01)

    # -- reads -------------------------------------------------------------------------------

    def get(self, kind: str, key: str) -> dict | None:
        """The document ``kind``/``key``, or None."""
        row = self._docs.find_one({"_id": _id(kind, key)}, {"doc": 1})
        return row["doc"] if row else None

    def find(self, kind: str, term: str) -> list[tuple[str, dict]]:
        """Documents of ``kind`` indexed under ``term``."""
        rows = self._docs.find({"kind": kind, "terms": term}, {"key": 1, "doc": 1}).sort("key")
        return [(r["key"], r["doc"]) for r in rows]

    def items(self, kind: str) -> list[tuple[str, dict]]:
        """Every document of ``kind``."""
        rows = self._docs.find({"kind": kind}, {"key": 1, "doc": 1}).sort("key")
        return [(r["key"], r["doc"]) for r in rows]

    def keys(self, kind: str) -> list[str]:
        """Every key of ``kind``."""
        return [r["key"] for r in self._docs.find({"kind": kind}, {"key": 1}).sort("key")]

    def count(self, kind: str) -> int:
        """How many documents of ``kind``."""
        return self._docs.count_documents({"kind": kind})

    def head(self) -> int:
        """The latest committed revision."""
        return int(self._meta.find_one({"_id": "head"})["value"])

    def compacted(self) -> int:
        """The highest dropped revision."""
        return int(self._meta.find_one({"_id": "compacted"})["value"])

    def changes(self, since: int, limit: int = 1000) -> list[Change]:
        """Changes after ``since``, oldest first."""
        rows = self._changes.find({"_id": {"$gt": since}}).sort("_id").limit(limit)
        return [
            Change(r["_id"], r["kind"], r["key"], r["op"], r["subject"], r.get("doc"), r["at"])
            for r in rows
        ]

    def compact(self, keep: int) -> int:
        """Drop all but the newest ``keep`` changes."""
        with self.transaction():
            cut = self.head() - keep
            done = self.compacted()
            if cut <= done:
                return done
            self._changes.delete_many({"_id": {"$lte": cut}})
            self._meta.update_one({"_id": "compacted"}, {"$set": {"value": cut}})
            return cut

    def close(self) -> None:
        """Close the client (a mongomock client stays, as its data is the database)."""
        if self.description != "mongomock":
            self._client.close()


def _id(kind: str, key: str) -> str:
    return f"{kind}\x1f{key}"


class _MongoTx(Tx):
    """Writes under the store lock, each remembered so a failure can be undone."""

    def __init__(self, store: MongoStore):
        self.store = store
        self.emitted = 0
        self._undo: list[tuple[str, str, dict | None]] = []

    def get(self, kind: str, key: str) -> dict | None:
        return self.store.get(kind, key)

    def find(self, kind: str, term: str) -> list[tuple[str, dict]]:
        return self.store.find(kind, term)

    def items(self, kind: str) -> list[tuple[str, dict]]:
        return self.store.items(kind)

    def keys(self, kind: str) -> list[str]:
        return self.store.keys(kind)

    def count(self, kind: str) -> int:
        return self.store.count(kind)

    def put(self, kind: str, key: str, doc: dict, terms: Iterable[str] = ()) -> None:
        before = self.store._docs.find_one_and_replace(
            {"_id": _id(kind, key)},
            {"kind": kind, "key": key, "doc": doc, "terms": sorted(set(terms))},
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        self._undo.append(("restore", _id(kind, key), before))

    def create(self, kind: str, key: str, doc: dict, terms: Iterable[str] = ()) -> bool:
        row = {
            "_id": _id(kind, key),
            "kind": kind,
            "key": key,
            "doc": doc,
            "terms": sorted(set(terms)),
        }
        try:
            self.store._docs.insert_one(row)
        except DuplicateKeyError:
            return False
        self._undo.append(("restore", row["_id"], None))
        return True

    def delete(self, kind: str, key: str) -> bool:
        before = self.store._docs.find_one_and_delete({"_id": _id(kind, key)})
        if before is None:
            return False
        self._undo.append(("restore", before["_id"], before))
        return True

    def emit(self, kind: str, key: str, op: str, subject: str, doc: dict | None) -> int:
        meta = self.store._meta.find_one_and_update(
            {"_id": "revision"}, {"$inc": {"value": 1}}, return_document=ReturnDocument.AFTER
        )
        revision = int(meta["value"])
        self.store._changes.insert_one(
            {
                "_id": revision,
                "kind": kind,
                "key": key,
                "op": op,
                "subject": subject,
                "doc": doc,
                "at": time.time(),
            }
        )
        self._undo.append(("change", str(revision), None))
        self.emitted = revision
        return revision

    def undo(self) -> None:
        """Put back what this transaction changed, newest first."""
        for what, ident, before in reversed(self._undo):
            try:
                if what == "change":
                    # The revision stays used; a gap in the feed is harmless to watchers.
                    self.store._changes.delete_one({"_id": int(ident)})
                elif before is None:
                    self.store._docs.delete_one({"_id": ident})
                else:
                    self.store._docs.replace_one({"_id": ident}, before, upsert=True)
            except PyMongoError:
                LOG.exception("undo of %s %s failed", what, ident)
        self._undo.clear()
