"""The managers' serving parts: the task pool, cached table answers and cached JWT principals."""

from __future__ import annotations

import threading
import time

import pytest

from oaknet.auth import Authenticator, AuthError, issue_jwt
from oaknet.config import AuthConfig
from oaknet.serving import TaskPool
from oaknet.web import PrincipalCache
from root_manager.answers import Answers

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-long-enough-for-hs256"


class Task:
    """A stand-in for a waitress channel: records which thread served it."""

    def __init__(self, hold: threading.Event | None = None):
        self.hold = hold
        self.thread: str | None = None
        self.done = threading.Event()
        self.cancelled = False

    def service(self) -> None:
        self.thread = threading.current_thread().name
        if self.hold is not None:
            self.hold.wait(5)
        self.done.set()

    def cancel(self) -> None:
        self.cancelled = True


def test_pool_reuses_the_last_idle_thread_and_starts_threads_on_demand():
    pool = TaskPool(8)
    try:
        served = []
        for _ in range(20):
            task = Task()
            pool.add_task(task)
            assert task.done.wait(5)
            served.append(task.thread)
            time.sleep(0.005)  # the thread parks again before the next task
        # One request at a time: one warm thread serves them all, no other is started.
        assert len(set(served)) == 1
        assert pool.started == 1
    finally:
        assert pool.shutdown(timeout=5)


def test_pool_queues_beyond_its_size_and_cancels_the_queue_on_shutdown():
    pool = TaskPool(2)
    hold = threading.Event()
    busy = [Task(hold), Task(hold)]
    queued = Task()
    for task in busy:
        pool.add_task(task)
    pool.add_task(queued)
    time.sleep(0.1)
    assert pool.started == 2 and queued.thread is None

    hold.set()  # the busy threads finish; one of them takes the queued task
    assert queued.done.wait(5)

    hold.clear()
    pool.add_task(Task(hold))
    pool.add_task(Task(hold))
    late = Task()
    pool.add_task(late)
    time.sleep(0.05)
    threading.Timer(0.2, hold.set).start()
    assert pool.shutdown(cancel_pending=True, timeout=5)
    assert late.cancelled and late.thread is None
    after = Task()
    pool.add_task(after)
    assert after.cancelled


def test_answers_hold_for_one_revision_only():
    answers = Answers(size=2)
    answers.put("name=a", 5, ("j1", "a", b"{}"))
    assert answers.get("name=a", 5) == ("j1", "a", b"{}")
    assert answers.get("name=a", 6) is None  # a change happened: rebuilt
    answers.put("name=a", 4, ("j1", "a", b"old"))  # a slower query of an older revision
    assert answers.get("name=a", 4) is None and answers.get("name=a", 5) == ("j1", "a", b"{}")
    answers.put("name=b", 5, ("j2", "b", b"{}"))
    answers.put("name=c", 5, ("j3", "c", b"{}"))  # over the size: not kept
    assert answers.get("name=c", 5) is None
    answers.put("name=c", 6, ("j3", "c", b"new"))
    assert answers.get("name=a", 6) is None and answers.get("name=c", 6)[2] == b"new"


def _principals(leeway: float = 0.0) -> PrincipalCache:
    cfg = AuthConfig(
        tokens={"static-token": {"subject": "ops", "roles": ["admin"]}},
        jwt_algorithm="HS256",
        jwt_secret=SECRET,
        jwt_leeway=leeway,
    )
    return PrincipalCache(Authenticator(cfg))


def test_a_jwt_is_verified_once_and_refused_once_expired():
    principals = _principals()
    token = issue_jwt(SECRET, "c1", ["cluster"], ttl=1.5)
    who = principals.authenticate(f"Bearer {token}")
    assert (who.subject, who.roles, who.method) == ("c1", frozenset({"cluster"}), "jwt")
    assert principals.authenticate(f"Bearer {token}") is who  # from the cache
    assert principals.authenticate("Bearer static-token").subject == "ops"

    time.sleep(2.1)  # past exp (whole seconds) with no leeway
    with pytest.raises(AuthError) as err:
        principals.authenticate(f"Bearer {token}")
    assert err.value.status == 401 and "expired" in err.value.detail


def test_a_forged_jwt_is_refused_even_next_to_a_cached_one():
    principals = _principals()
    token = issue_jwt(SECRET, "c1", ["cluster"])
    principals.authenticate(f"Bearer {token}")
    forged = issue_jwt("another-secret-that-is-long-enough-too", "c1", ["admin"])
    for header in (f"Bearer {forged}", f"Bearer {token}x", None, "Basic abc"):
        with pytest.raises(AuthError):
            principals.authenticate(header)
