"""The demo's scenario run once for the e2e tests: its measurements, and what it left behind."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import warnings

import pytest

# python-ovs imports eventlet, which warns on import; nothing here uses it.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from demo.main import TOOLS, run_demo
from demo.report import Progress


def _require_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and runs OVS")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (run scripts/install.sh)")


# Requests per client and service IP. web's select group spreads 16 hash slots over its 3
# instances (6/5/5), so an instance expects 31 % of the connections; with 150 connections the
# chance that one gets under 20 % is about 0.1 % (with the demo's 40 it would be about 4 %).
REQUESTS = 150


@pytest.fixture(scope="session")
def demo_run():
    """The whole demo (build, deploy, traffic, move, tear-down) under a fresh prefix."""
    _require_host()
    prefix = "oke" + secrets.token_hex(3)
    base_dir = os.path.join(tempfile.gettempdir(), f"oaknet-tb-{prefix}")
    result = run_demo(prefix, Progress(), requests=REQUESTS)
    return result, base_dir


def pytest_configure(config):
    """Silence eventlet's fork warning: python-ovs imports eventlet, namespace work forks."""
    config.addinivalue_line("filterwarnings", "ignore:Using fork:DeprecationWarning")
