"""Fixtures for dataplane tests: namespace testbeds with OVS workers (see scripts/testbed).

- ``tb_prefix``: a fresh, unique namespace prefix (``okt`` + 6 hex digits).
- ``testbed``: an entered ``testbed.Testbed`` for one test; everything it made is removed after
  the test, also when the test fails.
- ``module_testbed``: the same, shared by all tests of a module (build once, keep tests fast).
- ``two_workers``: workers w1, w2 (192.0.2.1-2, 2001:db8::1-2) in a per-test testbed.
- ``three_workers``: workers w1..w3 in the module testbed (tests must not disturb each other).
Workers run their own ovsdb-server/ovs-vswitchd in their namespace, with ``br-phy`` holding
the node IP and ``br-int`` (fail_mode secure, controller tcp:127.0.0.1:6653, nothing listening
until an agent starts). Tunnels are not made: the agent (or the test) makes them.
Before the first dataplane test, leftovers of crashed earlier runs (their pytest is gone) are
removed; testbeds of runs still alive are never touched.
"""

from __future__ import annotations

import secrets
import shutil

import pytest
import testbed as tb_lib

_reaped = False


def _require_tools() -> None:
    missing = [
        t
        for t in ("ovs-vswitchd", "ovsdb-server", "ovs-ofctl", "ping", "iperf3")
        if shutil.which(t) is None
    ]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (run scripts/install.sh)")


def _reap_crashed_runs() -> None:
    global _reaped
    if not _reaped:
        for prefix in tb_lib.stale_prefixes():
            tb_lib.cleanup(prefix)
        _reaped = True


def new_prefix() -> str:
    """Return a unique testbed prefix for this process."""
    return "okt" + secrets.token_hex(3)


@pytest.fixture
def tb_prefix() -> str:
    """A unique namespace prefix for one test."""
    return new_prefix()


@pytest.fixture
def testbed(tb_prefix):
    """An entered Testbed, torn down after the test."""
    _require_tools()
    _reap_crashed_runs()
    with tb_lib.Testbed(tb_prefix) as tb:
        yield tb


@pytest.fixture(scope="module")
def module_testbed():
    """An entered Testbed shared by the tests of one module."""
    _require_tools()
    _reap_crashed_runs()
    with tb_lib.Testbed(new_prefix()) as tb:
        yield tb


@pytest.fixture
def two_workers(testbed):
    """Workers w1 and w2 in a fresh testbed."""
    return testbed.add_workers(2)


@pytest.fixture(scope="module")
def three_workers(module_testbed):
    """Workers w1, w2 and w3 in the module's testbed."""
    return module_testbed.add_workers(3)


def pytest_configure(config):
    """Silence eventlet's fork warning: python-ovs imports eventlet, namespace work forks."""
    config.addinivalue_line("filterwarnings", "ignore:Using fork:DeprecationWarning")
