"""The embedded store: one SQLite file (WAL), safe for several processes on one machine."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from oaknet.store.base import Change, Store, StoreBusy, StoreError, Tx

LOG = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (kind, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS terms (
    kind TEXT NOT NULL, term TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (kind, term, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS terms_by_key ON terms (kind, key);
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL, subject TEXT NOT NULL,
    doc TEXT, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _dumps(doc: dict | None) -> str | None:
    return None if doc is None else json.dumps(doc, separators=(",", ":"), sort_keys=True)


class SQLiteStore(Store):
    """Documents, terms and changes in one SQLite file; writers serialise on BEGIN IMMEDIATE."""

    def __init__(self, path: str, busy_timeout: float = 10.0):
        super().__init__()
        self.path = path
        self.description = f"sqlite:{path}"
        self.busy_timeout = busy_timeout
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._conns_lock = threading.Lock()
        self._threads = threading.local()
        self._closed = False
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        # WAL lets readers (watchers, table queries) run while one process writes.
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal" and path != ":memory:":
            LOG.warning("sqlite %s: journal mode is %s, not wal", path, mode)
        # CREATE ... IF NOT EXISTS is idempotent, so two processes opening one file both succeed.
        conn.executescript(_SCHEMA)
        LOG.info("store opened: %s", self.description)

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"{self.description} is closed")
        conn = getattr(self._threads, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {self.path}: {exc}") from exc
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Every server thread has a connection: keep each one's private cache small and
            # share the file through the OS page cache instead.
            conn.execute("PRAGMA cache_size=-1024")
            conn.execute("PRAGMA mmap_size=67108864")
            self._threads.conn = conn
            with self._conns_lock:
                self._conns.append((threading.current_thread(), conn))
        return conn

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Tx]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreBusy(f"{self.path}: another writer held the store: {exc}") from exc
            raise StoreError(str(exc)) from exc
        tx = _SQLiteTx(conn)
        try:
            yield tx
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from exc

    def close(self) -> None:
        """Close the store: later calls fail with StoreError.

        Connections of threads that ended, and this thread's, are closed here. Another live
        thread may be inside a call on its connection (closing it then crashes the sqlite
        module), so that one is closed when its thread lets go of it.
        """
        self._closed = True
        me = threading.current_thread()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for thread, conn in conns:
            if thread is me or not thread.is_alive():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._threads = threading.local()

    # -- reads -------------------------------------------------------------------------------

    def get(self, kind: str, key: str) -> dict | None:
        """The document ``kind``/``key``, or None."""
        return _SQLiteTx(self._conn()).get(kind, key)

    def find(self, kind: str, term: str) -> list[tuple[str, dict]]:
        """Documents of ``kind`` indexed under ``term``."""
        return _SQLiteTx(self._conn()).find(kind, term)

    def items(self, kind: str) -> list[tuple[str, dict]]:
        """Every document of ``kind``."""
        return _SQLiteTx(self._conn()).items(kind)

    def keys(self, kind: str) -> list[str]:
        """Every key of ``kind``."""
        return _SQLiteTx(self._conn()).keys(kind)

    def count(self, kind: str) -> int:
        """How many documents of ``kind``."""
        return _SQLiteTx(self._conn()).count(kind)

    def head(self) -> int:
        """The latest revision ever emitted, also after compaction."""
        row = (
            self._conn().execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
        )
        return int(row[0]) if row else 0

    def compacted(self) -> int:
        """The highest dropped revision."""
        row = self._conn().execute("SELECT value FROM meta WHERE name='compacted'").fetchone()
        return int(row[0]) if row else 0

    def changes(self, since: int, limit: int = 1000) -> list[Change]:
        """Changes after ``since``, oldest first."""
        rows = (
            self._conn()
            .execute(
                "SELECT revision, kind, key, op, subject, doc, at FROM changes"
                " WHERE revision > ? ORDER BY revision LIMIT ?",
                (since, limit),
            )
            .fetchall()
        )
        return [
            Change(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else json.loads(r[5]), r[6])
            for r in rows
        ]

    def compact(self, keep: int) -> int:
        """Drop all but the newest ``keep`` changes."""
        with self.transaction() as tx:
            cut = self.head() - keep
            done = self.compacted()
            if cut > done:
                tx.conn.execute("DELETE FROM changes WHERE revision <= ?", (cut,))
                tx.conn.execute(
                    "INSERT INTO meta(name, value) VALUES('compacted', ?)"
                    " ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    (str(cut),),
                )
                LOG.debug("feed compacted up to revision %d", cut)
                return cut
            return done


class _SQLiteTx(Tx):
    """Statements on one connection; inside BEGIN IMMEDIATE when used as a transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.emitted = 0

    def get(self, kind: str, key: str) -> dict | None:
        row = self.conn.execute(
            "SELECT doc FROM docs WHERE kind=? AND key=?", (kind, key)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def find(self, kind: str, term: str) -> list[tuple[str, dict]]:
        # CROSS JOIN fixes the order: terms index first, then documents by primary key; the
        # planner otherwise walks every document of the kind (a full scan per table query).
        rows = self.conn.execute(
            "SELECT t.key, d.doc FROM terms t CROSS JOIN docs d ON d.kind=t.kind AND d.key=t.key"
            " WHERE t.kind=? AND t.term=? ORDER BY t.key",
            (kind, term),
        ).fetchall()
        return [(k, json.loads(d)) for k, d in rows]

    def items(self, kind: str) -> list[tuple[str, dict]]:
        rows = self.conn.execute(
            "SELECT key, doc FROM docs WHERE kind=? ORDER BY key", (kind,)
        ).fetchall()
        return [(k, json.loads(d)) for k, d in rows]

    def keys(self, kind: str) -> list[str]:
        rows = self.conn.execute("SELECT key FROM docs WHERE kind=? ORDER BY key", (kind,))
        return [r[0] for r in rows.fetchall()]

    def count(self, kind: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM docs WHERE kind=?", (kind,)).fetchone()[0]

    def put(self, kind: str, key: str, doc: dict, terms: Iterable[str] = ()) -> None:
        self.conn.execute(
            "INSERT INTO docs(kind, key, doc) VALUES(?, ?, ?)"
            " ON CONFLICT(kind, key) DO UPDATE SET doc=excluded.doc",
            (kind, key, _dumps(doc)),
        )
        self.conn.execute("DELETE FROM terms WHERE kind=? AND key=?", (kind, key))
        self._terms(kind, key, terms)

    def create(self, kind: str, key: str, doc: dict, terms: Iterable[str] = ()) -> bool:
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO docs(kind, key, doc) VALUES(?, ?, ?)", (kind, key, _dumps(doc))
        )
        if cur.rowcount != 1:
            return False
        self._terms(kind, key, terms)
        return True

    def delete(self, kind: str, key: str) -> bool:
        cur = self.conn.execute("DELETE FROM docs WHERE kind=? AND key=?", (kind, key))
        self.conn.execute("DELETE FROM terms WHERE kind=? AND key=?", (kind, key))
        return cur.rowcount == 1

    def emit(self, kind: str, key: str, op: str, subject: str, doc: dict | None) -> int:
        cur = self.conn.execute(
            "INSERT INTO changes(kind, key, op, subject, doc, at) VALUES(?, ?, ?, ?, ?, ?)",
            (kind, key, op, subject, _dumps(doc), time.time()),
        )
        self.emitted = cur.lastrowid
        return self.emitted

    def _terms(self, kind: str, key: str, terms: Iterable[str]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO terms(kind, term, key) VALUES(?, ?, ?)",
            [(kind, t, key) for t in set(terms)],
        )
