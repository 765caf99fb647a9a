"""Suite-wide settings: the repo's scripts/ on sys.path and a clear skip for root-only tests."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

NEEDS_ROOT = {"dataplane", "e2e"}


def pytest_collection_modifyitems(config, items):
    """Skip namespace/OVS tests with a reason when not root, instead of failing obscurely."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: creates network namespaces and runs OVS")
    for item in items:
        if NEEDS_ROOT & {m.name for m in item.iter_markers()}:
            item.add_marker(skip)
