"""One node's own ovsdb-server and ovs-vswitchd, each with its own run, db and log directory."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time

from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import idlutils

from ovs_setup import ovsdb
from ovs_setup.netns import open_netns, setns

LOG = logging.getLogger(__name__)

SCHEMA_PATHS = (
    "/usr/share/openvswitch/vswitch.ovsschema",
    "/usr/local/share/openvswitch/vswitch.ovsschema",
)
# A unix socket path must fit into sockaddr_un.sun_path (108 bytes incl. NUL).
_MAX_SOCKET_PATH = 107
_DAEMONS = ("ovsdb-server", "ovs-vswitchd")


class OvsError(RuntimeError):
    """An OVS daemon did not start, stop or answer as expected."""


def default_datapath_type() -> str:
    """Return "system" when the openvswitch kernel module is loaded, else "netdev"."""
    return "system" if os.path.isdir("/sys/module/openvswitch") else "netdev"


class NodeOvs:
    """One node's own ovsdb-server + ovs-vswitchd, with its own run/db/log dir.

    The daemons run in the network namespace the calling process is in, or in ``netns``
    (a path, `ip netns` name or PID) when given; tunnels, routes and the bridges' internal
    ports belong to that namespace.
    """

    def __init__(
        self,
        run_dir: str,
        name: str = "node",
        netns: str | int | None = None,
        datapath_type: str | None = None,
    ):
        self.run_dir = os.path.abspath(run_dir)
        self.name = name
        self.netns = netns
        self.datapath_type = datapath_type or default_datapath_type()
        self.db_url = f"unix:{self.run_dir}/db.sock"
        self.db_path = os.path.join(self.run_dir, "conf.db")
        # Longest socket we create or OVS creates: the per-pid control socket.
        if len(os.path.join(self.run_dir, "ovs-vswitchd.4194304.ctl")) > _MAX_SOCKET_PATH:
            raise ValueError(f"run_dir {self.run_dir!r} is too long for unix socket paths")

    # -- public API -------------------------------------------------------------------------

    def start(self) -> None:
        """Start both daemons unless they run; create the database if missing; wait for both."""
        os.makedirs(self.run_dir, mode=0o750, exist_ok=True)
        if not os.path.exists(self.db_path):
            self._run(["ovsdb-tool", "create", self.db_path, _schema_path()])
            LOG.debug("%s: created %s", self.name, self.db_path)

        started = []
        if self.pid("ovsdb-server") is None:
            self._spawn(
                "ovsdb-server",
                [
                    "ovsdb-server",
                    self.db_path,
                    f"--remote=punix:{self.run_dir}/db.sock",
                    f"--unixctl={self.run_dir}/ovsdb-server.ctl",
                ],
            )
            started.append("ovsdb-server")
        self._wait_answers("ovsdb-server", os.path.join(self.run_dir, "ovsdb-server.ctl"))
        _ensure_root_row(self.db_url)

        if self.pid("ovs-vswitchd") is None:
            self._spawn("ovs-vswitchd", ["ovs-vswitchd", self.db_url])
            started.append("ovs-vswitchd")
        self._wait_answers("ovs-vswitchd", self._vswitchd_ctl())
        if started:
            LOG.info(
                "node %s: started %s in %s (datapath %s)",
                self.name,
                " and ".join(started),
                self.run_dir,
                self.datapath_type,
            )

    def stop(self, cleanup: bool = True) -> None:
        """Stop both daemons by the PIDs in their pidfiles; do nothing for one not running.

        With ``cleanup`` ovs-vswitchd first removes its datapath: the userspace datapath keeps
        its tap devices (the bridges' internal ports) after a plain SIGTERM.
        """
        ovsdb.close_api(self.db_url)
        stopped = False
        for daemon in reversed(_DAEMONS):
            pid = self.pid(daemon)
            if pid is None:
                continue
            if daemon == "ovs-vswitchd" and cleanup:
                self._exit_cleanup(pid)
            _terminate(pid, daemon)
            stopped = True
            pidfile = self._pidfile(daemon)
            if os.path.exists(pidfile):
                os.unlink(pidfile)
        if stopped:
            LOG.info("node %s: OVS stopped", self.name)

    def mgmt_url(self, bridge: str) -> str:
        """Return the ovs-ofctl target of ``bridge``'s management socket."""
        return f"unix:{self.run_dir}/{bridge}.mgmt"

    def appctl(self, *args: str) -> str:
        """Run ``ovs-appctl`` against this node's ovs-vswitchd and return its output."""
        return self._run(["ovs-appctl", "-t", self._vswitchd_ctl(), *args])

    def pid(self, daemon: str) -> int | None:
        """Return the PID of ``daemon`` when its pidfile names a live process of this node."""
        try:
            with open(self._pidfile(daemon), encoding="ascii") as handle:
                pid = int(handle.read().strip())
        except (FileNotFoundError, ValueError):
            return None
        # The pid may have been reused: only a process started with our pidfile is ours.
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            return None
        marker = f"--pidfile={self._pidfile(daemon)}".encode()
        return pid if marker in cmdline else None

    def is_running(self) -> bool:
        """Return whether both daemons of this node are alive."""
        return all(self.pid(daemon) is not None for daemon in _DAEMONS)

    # -- helpers ----------------------------------------------------------------------------

    def _pidfile(self, daemon: str) -> str:
        return os.path.join(self.run_dir, f"{daemon}.pid")

    def _vswitchd_ctl(self) -> str:
        pid = self.pid("ovs-vswitchd")
        if pid is None:
            raise OvsError(f"node {self.name}: ovs-vswitchd is not running")
        return os.path.join(self.run_dir, f"ovs-vswitchd.{pid}.ctl")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Without these every daemon on the machine would share /var/run/openvswitch.
        for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"):
            env[var] = self.run_dir
        return env

    def _spawn(self, daemon: str, argv: list[str]) -> None:
        argv = argv + [
            f"--pidfile={self._pidfile(daemon)}",
            f"--log-file={self.run_dir}/{daemon}.log",
            "--detach",
            "--no-chdir",
            "-vconsole:off",
            "-vfile:info",
        ]
        preexec = None
        if self.netns is not None:
            fd = open_netns(self.netns)
            os.set_inheritable(fd, False)

            def preexec() -> None:
                setns(fd)

        try:
            # --detach returns once the daemon is ready (or has failed).
            self._run(argv, preexec_fn=preexec)
        finally:
            if self.netns is not None:
                os.close(fd)
        LOG.debug("node %s: started %s pid %s", self.name, daemon, self.pid(daemon))

    def _exit_cleanup(self, pid: int, timeout: float = 5.0) -> None:
        try:
            self.appctl("exit", "--cleanup")
        except OvsError as exc:
            LOG.warning("node %s: ovs-vswitchd exit --cleanup failed: %s", self.name, exc)
            return
        deadline = time.monotonic() + timeout
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _wait_answers(self, daemon: str, ctl: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._run(["ovs-appctl", "-t", ctl, "version"], timeout=2)
                return
            except OvsError as exc:
                if time.monotonic() > deadline:
                    raise OvsError(f"node {self.name}: {daemon} does not answer: {exc}") from exc
            time.sleep(0.05)

    def _run(self, argv: list[str], timeout: float = 30, preexec_fn=None) -> str:
        try:
            proc = subprocess.run(
                argv,
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=preexec_fn,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OvsError(f"{argv[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise OvsError(
                f"{' '.join(argv[:4])}: rc={proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc.stdout


def _schema_path() -> str:
    for path in SCHEMA_PATHS:
        if os.path.exists(path):
            return path
    raise OvsError("vswitch.ovsschema not found; is openvswitch-switch installed?")


def _ensure_root_row(db_url: str, timeout: float = 10.0) -> None:
    """Insert the Open_vSwitch root row into a fresh database (ovs-vswitchd needs it)."""
    helper = idlutils.get_schema_helper(db_url, "Open_vSwitch")
    helper.register_table("Open_vSwitch")
    idl = ovs_idl.Idl(db_url, helper)
    try:
        idlutils.wait_for_change(idl, timeout)
        if idl.tables["Open_vSwitch"].rows:
            return
        txn = ovs_idl.Transaction(idl)
        txn.insert(idl.tables["Open_vSwitch"])
        status = txn.commit_block()
        if status not in (ovs_idl.Transaction.SUCCESS, ovs_idl.Transaction.UNCHANGED):
            raise OvsError(f"{db_url}: creating the Open_vSwitch row failed: {status}")
    finally:
        idl.close()


def _terminate(pid: int, daemon: str, timeout: float = 5.0) -> None:
    """SIGTERM ``pid``, wait for it to go, SIGKILL after ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            LOG.warning("%s pid %d ignored SIGTERM; killing it", daemon, pid)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.02)


def process_alive(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie (a detached daemon is not our child)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def ovs_installed() -> bool:
    """Return whether the OVS daemons and tools are on PATH."""
    return all(shutil.which(tool) for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-appctl"))
