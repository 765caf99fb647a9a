"""A manager process ends promptly on SIGTERM, also while a watcher holds a long-poll open."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import requests

from tests.control.conftest import TOKENS, running_manager
from tests.control.test_cluster_support import CLUSTER_TOKENS

pytestmark = pytest.mark.control


def _long_poll(url: str, path: str, token: str, outcome: dict) -> None:
    """One 50 s long-poll; records the status (or the error) and when it ended."""
    try:
        resp = requests.get(
            f"{url}{path}",
            params={"since": 0, "timeout": 50},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        outcome["status"] = resp.status_code
        outcome["body"] = resp.json()
    except requests.RequestException as exc:
        outcome["error"] = exc
    outcome["ended"] = time.monotonic()


def _stop_while_polling(url: str, proc, path: str, token: str) -> tuple[float, dict]:
    """Open a long-poll, SIGTERM the manager once it waits; (seconds to exit, poll outcome)."""
    outcome: dict = {}
    poller = threading.Thread(target=_long_poll, args=(url, path, token, outcome), daemon=True)
    poller.start()
    deadline = time.monotonic() + 10
    while requests.get(f"{url}/api/health", timeout=5).json()["watchers"] < 1:
        assert time.monotonic() < deadline, "the long-poll never started waiting"
        time.sleep(0.02)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    took = time.monotonic() - started
    poller.join(5)
    outcome["after"] = outcome.get("ended", float("inf")) - started
    return took, outcome


def _assert_prompt_exit(module: str, tmp_path, config: dict, path: str, token: str) -> None:
    with running_manager(module, module, tmp_path, config) as (url, proc):
        took, outcome = _stop_while_polling(url, proc, path, token)

    assert proc.returncode == 0
    assert took < 1.0, f"{module} took {took:.2f} s to exit"
    # The watcher got an ordinary empty answer at once, not a cut connection after a timeout.
    assert outcome.get("status") == 200 and outcome["body"]["changes"] == []
    assert outcome["after"] < 1.0
    assert "stopping" in (tmp_path / f"{module}.log").read_text()


def test_root_exits_within_a_second_of_sigterm_during_a_long_poll(tmp_path):
    config = {
        "store": {"url": f"sqlite:///{tmp_path / 'root.db'}"},
        "auth": {"tokens": TOKENS},
        "log_level": "INFO",
    }
    _assert_prompt_exit("root_manager", tmp_path, config, "/api/net/watch", "tok-orchestrator")


def test_cluster_exits_within_a_second_of_sigterm_during_a_long_poll(tmp_path, root):
    config = {
        "cluster_id": "c1",
        "store": {"url": f"sqlite:///{tmp_path / 'c1.db'}"},
        "auth": {"tokens": CLUSTER_TOKENS},
        "root": {"url": root.url, "token": "tok-c1", "watch_timeout": 5},
        "log_level": "INFO",
    }
    _assert_prompt_exit("cluster_manager", tmp_path, config, "/api/net/node/watch", "tok-a1")
