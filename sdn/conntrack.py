"""Remove the conntrack entries of a gone instance from the node's userspace datapath.

The agent asks ovs-vswitchd through its control socket (``ovs-appctl dpctl/flush-conntrack``
with a reply-direction tuple). os-ken has no class for OVS's NXT_CT_FLUSH message; OVS 3.1
does accept it (``ovs-ofctl ct-flush BR zone=1 '' ct_nw_src=IP`` removed 100 of 100 entries in
one call here), so a hand-built message could replace the control socket later.
A partial flush call was also seen to remove only part of many matching entries (OVS-FACTS
item 2), hence the loop until a dump shows none.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import subprocess

LOG = logging.getLogger(__name__)

MAX_ROUNDS = 24
_REPLY_SRC = re.compile(r"reply=\(src=([0-9a-fA-F.:]+),")


class ConntrackError(RuntimeError):
    """ovs-appctl failed or ovs-vswitchd is not running."""


def vswitchd_ctl(run_dir: str) -> str:
    """The control socket path of the ovs-vswitchd whose pidfile is in ``run_dir``."""
    try:
        with open(os.path.join(run_dir, "ovs-vswitchd.pid"), encoding="ascii") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError) as exc:
        raise ConntrackError(f"no ovs-vswitchd pidfile in {run_dir}: {exc}") from None
    return os.path.join(run_dir, f"ovs-vswitchd.{pid}.ctl")


class Conntrack:
    """Conntrack operations on the node's ovs-vswitchd (found through its run dir)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def appctl(self, *args: str) -> str:
        """Run one ovs-appctl command against ovs-vswitchd and return its output."""
        cmd = ["ovs-appctl", "-t", vswitchd_ctl(self.run_dir), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        if res.returncode != 0:
            raise ConntrackError(f"{' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
        return res.stdout

    def reply_srcs(self, zone: int) -> set[str]:
        """The reply-direction source addresses of ``zone``'s entries (one dump)."""
        return set(self._reply_srcs(zone))

    def count_reply_src(self, zone: int, addr: str) -> int:
        """How many entries of ``zone`` have ``addr`` as the source of their reply direction."""
        want = ipaddress.ip_address(addr).compressed
        return sum(1 for src in self._reply_srcs(zone) if src == want)

    def _reply_srcs(self, zone: int) -> list[str]:
        """The reply-direction source address of each of ``zone``'s entries."""
        text = self.appctl("dpctl/dump-conntrack", f"zone={zone}")
        return [ipaddress.ip_address(m).compressed for m in _REPLY_SRC.findall(text)]

    def flush_reply_src(self, zone: int, addr: str) -> int:
        """Flush every entry of ``zone`` whose reply comes from ``addr``; return the rounds.

        After DNAT the chosen instance is the reply-direction source of the entry, so this
        removes exactly the connections translated to that instance.
        """
        ip = ipaddress.ip_address(addr)
        key = "ct_nw_src" if ip.version == 4 else "ct_ipv6_src"
        for rounds in range(1, MAX_ROUNDS + 1):
            self.appctl("dpctl/flush-conntrack", f"zone={zone}", "", f"{key}={ip.compressed}")
            if self.count_reply_src(zone, addr) == 0:
                LOG.debug(
                    "conntrack zone %d: entries from %s flushed in %d round(s)", zone, addr, rounds
                )
                return rounds
        raise ConntrackError(
            f"zone {zone}: entries from {addr} remain after {MAX_ROUNDS} flush rounds"
        )
