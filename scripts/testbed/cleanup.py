"""Remove what testbed runs left behind, by prefix: OVS daemons, processes, namespaces."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

from ovs_setup import ovsdb
from ovs_setup.netns import list_named, remove_named
from ovs_setup.node import NodeOvs
from testbed import procs

OWNER_FILE = "owner.pid"  # the PID of the process that built the testbed


def cleanup(prefix: str, base_dir: str | None = None) -> list[str]:
    """Remove what an earlier run with ``prefix`` left: OVS daemons, processes, namespaces."""
    removed: list[str] = []
    base = base_dir or default_base_dir(prefix)
    if os.path.isdir(base):
        for entry in sorted(os.listdir(base)):
            run_dir = os.path.join(base, entry)
            if os.path.exists(os.path.join(run_dir, "ovsdb-server.pid")):
                node = NodeOvs(run_dir, name=entry)
                if node.pid("ovs-vswitchd") or node.pid("ovsdb-server"):
                    node.stop()
                    removed.append(f"ovs:{entry}")
    for name in list_named():
        if name.startswith(prefix + "-"):
            for pid in procs.pids_in_netns(name):
                kill(pid)
                removed.append(f"pid:{pid}")
            remove_named(name)
            removed.append(f"netns:{name}")
    if os.path.isdir(base):
        shutil.rmtree(base, ignore_errors=True)
        removed.append(f"dir:{base}")
    ovsdb.close_all()
    return removed


def stale_prefixes() -> list[str]:
    """Return the prefixes of testbeds whose building process is gone (crashed runs)."""
    stale = []
    root = tempfile.gettempdir()
    for entry in sorted(os.listdir(root)):
        if not entry.startswith("oaknet-tb-"):
            continue
        try:
            with open(os.path.join(root, entry, OWNER_FILE), encoding="ascii") as handle:
                owner = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        if not os.path.exists(f"/proc/{owner}"):
            stale.append(entry[len("oaknet-tb-") :])
    return stale


def default_base_dir(prefix: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"oaknet-tb-{prefix}")


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
