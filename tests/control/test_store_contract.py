"""One contract for every store adapter: SQLite, MongoDB (mongomock, or a real server).

A real MongoDB is used when OAKNET_TEST_MONGO_URL is set (e.g. mongodb://127.0.0.1:27017);
the adapter in use is in each test id (``[sqlite]``, ``[mongomock]``, ``[mongodb]``).
"""

import os
import threading
import time
import uuid

import pytest

from oaknet.feed import Feed
from oaknet.pools import AddressPool, PoolError
from oaknet.store import DELETE, PUT, StoreError, open_store

pytestmark = pytest.mark.control

MONGO_URL = os.environ.get("OAKNET_TEST_MONGO_URL")
ADAPTERS = ["sqlite", "mongomock"] + (["mongodb"] if MONGO_URL else [])


@pytest.fixture(params=ADAPTERS)
def store_url(request, tmp_path):
    """A fresh, empty database URL for the adapter under test."""
    name = f"okt{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/{name}.db"
    elif request.param == "mongomock":
        yield f"mongomock://{name}/oaknet"
    else:
        url = f"{MONGO_URL.rstrip('/')}/{name}"
        print(f"store contract against real MongoDB {MONGO_URL} database {name}")
        yield url
        import pymongo

        pymongo.MongoClient(MONGO_URL).drop_database(name)


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def test_documents_round_trip(store):
    with store.transaction() as tx:
        tx.put("svc", "b", {"n": 2, "nested": {"list": [1, "x", None]}})
        tx.put("svc", "a", {"n": 1})
        tx.put("other", "a", {"n": 9})
    assert store.get("svc", "a") == {"n": 1}
    assert store.get("svc", "missing") is None
    assert store.items("svc") == [
        ("a", {"n": 1}),
        ("b", {"n": 2, "nested": {"list": [1, "x", None]}}),
    ]
    assert store.keys("svc") == ["a", "b"]
    assert store.count("svc") == 2
    with store.transaction() as tx:
        tx.put("svc", "a", {"n": 10})
        assert tx.get("svc", "a") == {"n": 10}  # a transaction reads its own writes
        assert tx.delete("svc", "b")
        assert not tx.delete("svc", "b")
    assert store.items("svc") == [("a", {"n": 10})]
    assert store.get("other", "a") == {"n": 9}


def test_terms_index_follows_the_document(store):
    with store.transaction() as tx:
        tx.put("svc", "s1", {"v": 1}, ["name=web", "ip=10.30.0.1"])
        tx.put("svc", "s2", {"v": 2}, ["name=db", "ip=10.30.0.2", "ip=10.30.0.1"])
    assert [k for k, _ in store.find("svc", "ip=10.30.0.1")] == ["s1", "s2"]
    with store.transaction() as tx:
        tx.put("svc", "s1", {"v": 3}, ["name=web"])  # terms are replaced, not merged
    assert store.find("svc", "ip=10.30.0.1") == [("s2", {"v": 2})]
    assert store.find("svc", "name=web") == [("s1", {"v": 3})]
    with store.transaction() as tx:
        tx.delete("svc", "s2")
    assert store.find("svc", "ip=10.30.0.1") == []
    assert store.find("nokind", "name=web") == []


def test_create_is_insert_if_absent(store):
    with store.transaction() as tx:
        assert tx.create("claim", "10.30.0.1", {"owner": "a"}, ["owner=a"])
        assert not tx.create("claim", "10.30.0.1", {"owner": "b"}, ["owner=b"])
    assert store.get("claim", "10.30.0.1") == {"owner": "a"}
    assert store.find("claim", "owner=b") == []


def test_failed_transaction_changes_nothing(store):
    with store.transaction() as tx:
        tx.put("svc", "keep", {"v": 1}, ["t=1"])
    head = store.head()
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.put("svc", "keep", {"v": 2}, ["t=2"])
        tx.put("svc", "new", {"v": 3})
        tx.create("claim", "x", {})
        tx.delete("svc", "keep")
        tx.emit("svc", "keep", PUT, "keep", {"v": 2})
        raise RuntimeError("boom")
    assert store.items("svc") == [("keep", {"v": 1})]
    assert store.find("svc", "t=1") == [("keep", {"v": 1})]
    assert store.get("claim", "x") is None
    assert store.head() == head
    assert store.changes(0) == []


def test_nested_transaction_joins_the_outer_one(store):
    with pytest.raises(ValueError), store.transaction() as outer:
        outer.put("svc", "a", {"v": 1})
        with store.transaction() as inner:
            assert inner is outer
            inner.put("svc", "b", {"v": 2})
        raise ValueError("undo both")
    assert store.items("svc") == []


def test_revisions_are_ordered_persisted_and_compacted(store_url, store):
    revs = []
    for i in range(5):
        with store.transaction() as tx:
            revs.append(tx.emit("svc", f"k{i}", PUT if i % 2 == 0 else DELETE, f"s{i}", {"i": i}))
    assert revs == sorted(revs) and len(set(revs)) == 5
    assert store.head() == revs[-1]
    got = store.changes(revs[1])
    assert [c.revision for c in got] == revs[2:]
    assert [(c.key, c.op, c.subject, c.doc) for c in got[:1]] == [("k2", PUT, "s2", {"i": 2})]
    assert len(store.changes(0, limit=2)) == 2

    reopened = open_store(store_url)  # a restarted manager
    try:
        assert reopened.head() == revs[-1]
        assert [c.revision for c in reopened.changes(0)] == revs
        assert reopened.compact(keep=2) == revs[2]
        assert reopened.compacted() == revs[2]
        assert [c.revision for c in reopened.changes(0)] == revs[3:]
        assert reopened.compact(keep=10) == revs[2]  # never moves back
        with reopened.transaction() as tx:
            assert tx.emit("svc", "k", PUT, "s", None) == revs[-1] + 1
    finally:
        reopened.close()


def test_concurrent_claims_from_two_store_handles_are_distinct(store_url, store):
    other = open_store(store_url)  # a second manager on the same database
    pool = AddressPool("svc", "10.30.0.0/16")
    got, errors = [], []

    def worker(handle, n):
        try:
            for i in range(15):
                with handle.transaction() as tx:
                    got.append(pool.allocate(tx, f"{n}-{i}"))
        except (StoreError, PoolError) as exc:  # collected and asserted below
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(h, n))
        for n, h in enumerate([store, other, store, other])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert not errors
    assert len(got) == 60 and len(set(got)) == 60
    assert pool.used(store) == 60


def test_feed_wakes_watchers_on_changes_from_another_handle(store_url, store):
    feed = Feed(store, poll_interval=0.05, keep=3)
    feed.start()
    other = open_store(store_url)
    try:
        start = feed.head
        result = {}

        def watch():
            result["r"] = feed.wait(start, timeout=5, match=lambda c: c.subject == "wanted")

        t = threading.Thread(target=watch)
        t.start()
        time.sleep(0.1)
        with other.transaction() as tx:
            tx.emit("svc", "x", PUT, "ignored", None)
            tx.emit("svc", "y", PUT, "wanted", {"v": 1})
        t.join(5)
        r = result["r"]
        assert not r.resync
        assert [c.key for c in r.changes] == ["y"]
        assert r.revision == other.head()
        idle = feed.wait(r.revision, timeout=0.2)
        assert idle.changes == [] and idle.revision == r.revision
        for i in range(5):
            with other.transaction() as tx:
                tx.emit("svc", f"z{i}", PUT, "wanted", None)
        feed.compact()
        assert feed.wait(start, timeout=0).resync
        assert feed.wait(other.head() + 100, timeout=0).resync
        tail = feed.wait(other.head() - 2, timeout=0)
        assert [c.key for c in tail.changes] == ["z3", "z4"]
    finally:
        feed.stop()
        other.close()


def test_sqlite_lookups_use_indexes(tmp_path):
    """Table queries stay cheap with many services: no statement scans a whole kind."""
    from oaknet.store.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "plan.db"))
    try:
        conn = store._conn()
        original = conn.execute
        plans = []

        class Spy:
            def execute(self, sql, params=()):
                if sql.lstrip().upper().startswith("SELECT") and "sqlite_sequence" not in sql:
                    plans.append(original("EXPLAIN QUERY PLAN " + sql, params).fetchall())
                return original(sql, params)

        from oaknet.store.sqlite import _SQLiteTx

        tx = _SQLiteTx(Spy())
        tx.get("service", "k")
        tx.find("service", "ip=10.30.0.1")
        for plan in plans:
            details = " ".join(row[-1] for row in plan)
            assert "SCAN" not in details, details
            assert "PRIMARY KEY (kind=? AND" in details, details
    finally:
        store.close()
