"""Tools of the node-scale benchmark: ovs-ofctl on one bridge, flow reports, /proc, agent log."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from typing import Self


def reconcile_time(log_path: str) -> float:
    """The reconcile time the agent logged last ('switch reconciled in X s')."""
    found = None
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = re.search(r"switch reconciled in ([0-9.]+)s", line)
            found = float(match.group(1)) if match else found
    if found is None:
        raise RuntimeError(f"no reconcile logged in {log_path}")
    return found


def computed_at(log_path: str, after: float) -> float:
    """Wall time of the agent's first 'services changed' log line at or after ``after``."""
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if "sdn.agent_table: service table:" not in line:
                continue
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            stamp += int(line[20:23]) / 1000
            if stamp >= after - 0.001:
                return stamp
    raise RuntimeError(f"no 'services changed' line after {after} in {log_path}")


class FlowWatch:
    """Flows added to a bridge, as ovs-vswitchd reports them (``ovs-ofctl monitor``), with the
    time each report arrived: no polling load on the switch while an update is timed."""

    def __init__(self, worker):
        argv = ["ovs-ofctl", "-O", "OpenFlow15", "monitor"]
        argv += [worker.ovs.mgmt_url(worker.bridge), "watch:!initial,!delete,!modify,!actions"]
        # Its control socket goes into the node's run dir, like everything of that node.
        env = {**os.environ, "OVS_RUNDIR": worker.ovs.run_dir}
        # ovs-ofctl prints the reply to its request on stdout, then the reports of flow
        # changes on stderr (unbuffered).
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.seen: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        # Registered once the (empty) reply is there: no change after this is missed.
        if "FLOW_MONITOR reply" not in self.proc.stdout.readline():
            self.close()
            raise RuntimeError("ovs-ofctl monitor did not start")
        threading.Thread(target=self._read, name="flow-watch", daemon=True).start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.seen.append((time.monotonic(), line))
                self._cond.notify_all()

    def wait_for(self, needle: str, deadline: float) -> float:
        """The arrival time of the first report containing ``needle`` followed by a delimiter."""
        with self._cond:
            while True:
                for stamp, line in self.seen:
                    if any(needle + end in line for end in (" ", ",", "\n")):
                        return stamp
                if self.proc.poll() is not None:
                    raise RuntimeError("ovs-ofctl monitor ended")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no flow with {needle} was added")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        """Stop the monitor."""
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Ofctl:
    """ovs-ofctl against one worker's br-int, through its management socket."""

    def __init__(self, worker):
        self.target = worker.ovs.mgmt_url(worker.bridge)

    def run(self, *args: str) -> str:
        """Run one ovs-ofctl command; its stdout."""
        argv = ["ovs-ofctl", "-O", "OpenFlow15", args[0], self.target, *args[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    def flow_count(self) -> int:
        """How many flows the bridge holds."""
        found = re.search(r"flow_count=(\d+)", self.run("dump-aggregate"))
        return int(found.group(1)) if found else -1

    def group_count(self) -> int:
        """How many groups the bridge holds."""
        return sum(1 for line in self.run("dump-groups").splitlines() if "group_id=" in line)

    def group(self, gid: int) -> str:
        """One group as ovs-ofctl prints it ('' when it does not exist)."""
        return self.run("dump-groups", str(gid))


def cpu_share(seconds: float = 0.3) -> float:
    """The share of one core this process gets now: CPU time / wall time of a busy loop."""
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        sum(range(1000))
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | None) -> float:
    """Resident memory of a process in MB (VmRSS)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
