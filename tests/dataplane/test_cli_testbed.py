"""``oaknet testbed status|down`` on real namespace testbeds (one crashed, one in use).

The testbeds live under a temporary directory of this test (TMPDIR), so the commands see them
and nothing else of the machine's testbeds.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
from agent_support import REPO, oaknet

pytestmark = pytest.mark.dataplane

# Builds a testbed and leaves without tearing it down: as a crashed run would (or stays).
BUILDER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
import testbed
prefix, stay, ready = sys.argv[2], sys.argv[3] == "stay", sys.argv[4]
tb = testbed.Testbed(prefix).__enter__()
tb.add_namespace("a")
if not stay:
    tb.add_worker("w1", "192.0.2.1")
open(ready, "w").close()
if stay:
    time.sleep(300)
os._exit(0)
"""


@pytest.fixture
def tmpdir_env():
    """A short private TMPDIR (OVS control sockets must fit in a unix socket path)."""
    path = tempfile.mkdtemp(prefix="okt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def build(tmp: str, prefix: str, stay: bool) -> subprocess.Popen:
    """Start a builder process; return once its testbed exists."""
    ready = os.path.join(tmp, f"{prefix}.ready")
    env = {**os.environ, "TMPDIR": tmp, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            BUILDER,
            str(REPO / "scripts"),
            prefix,
            "stay" if stay else "leave",
            ready,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not stay:
        assert proc.wait(60) == 0, proc.stderr.read()
    deadline = 600
    while not os.path.exists(ready) and deadline:
        assert proc.poll() is None or not stay, proc.stderr.read()
        deadline -= 1
        subprocess.run(["sleep", "0.1"], check=False)
    assert os.path.exists(ready)
    return proc


def test_status_and_down_remove_only_what_they_should(tmpdir_env):
    if shutil.which("ovs-vswitchd") is None:
        pytest.skip("Open vSwitch is not installed (run scripts/install.sh)")
    import testbed as tb_lib

    from ovs_setup.node import process_alive

    tmp = tmpdir_env
    crashed, busy = "okt" + secrets.token_hex(3), "okt" + secrets.token_hex(3)
    env = {"TMPDIR": tmp}
    builder = None
    try:
        build(tmp, crashed, stay=False)
        builder = build(tmp, busy, stay=True)

        out = oaknet("testbed", "status", env=env)
        assert out.returncode == 0, out.stderr
        rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
        assert re.match(
            rf"^{crashed}  stale \(pid \d+ gone\)\s+3\s+1\s+a, ul, w1$", rows[crashed]
        ), out.stdout
        assert re.match(rf"^{busy}\s+running \(pid {builder.pid}\)\s+1\s+0\s+a$", rows[busy]), (
            out.stdout
        )
        assert out.stdout.endswith(f"`oaknet testbed down` removes the stale ones: {crashed}\n")
        with open(os.path.join(tmp, f"oaknet-tb-{crashed}", "w1", "ovs-vswitchd.pid")) as f:
            ovs_pid = int(f.read())

        # Without a prefix: every stale testbed, and only those.
        out = oaknet("testbed", "down", env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == (
            f"testbed {crashed}: removed 1 OVS, 3 namespaces, 1 directory"
        )
        assert not _namespaces(crashed) and not process_alive(ovs_pid)
        assert _namespaces(busy) == [f"{busy}-a"]

        # A testbed in use is kept unless forced.
        out = oaknet("testbed", "down", busy, env=env)
        assert out.returncode == 1
        assert out.stderr.strip() == (
            f"oaknet: testbed {busy} is in use by pid "
            f"{builder.pid}; not removed (--force removes it anyway)"
        )
        assert _namespaces(busy) == [f"{busy}-a"]
        out = oaknet("testbed", "down", "--force", busy, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"testbed {busy}: removed 1 namespace, 1 directory"
        assert not _namespaces(busy)

        out = oaknet("testbed", "status", env=env)
        assert out.stdout == "no testbeds on this machine\n"
        out = oaknet("testbed", "down", env=env)
        assert out.stdout.startswith("no testbed to remove")
    finally:
        if builder is not None and builder.poll() is None:
            builder.send_signal(signal.SIGKILL)
            builder.wait(10)
        for prefix in (crashed, busy):
            tb_lib.cleanup(prefix, base_dir=os.path.join(tmp, f"oaknet-tb-{prefix}"))


def _namespaces(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix + "-"))
    except FileNotFoundError:
        return []
