"""Per host-pair one-way delays on the underlay bridge (tc redirect into a delay line)."""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys

from ovs_setup.netns import iproute, open_netns, setns
from testbed import procs

LOG = logging.getLogger(__name__)

DELAYLINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delayline.py")
TC_H_CLSACT_INGRESS = 0xFFFFFFF2
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


class Delays:
    """Delays frames entering the underlay bridge from one host towards another.

    The frames a host sends to a delayed peer are redirected (clsact ingress, u32 on the
    destination IP, mirred) into a tap port of the bridge owned by the delay line process,
    which writes them back after the delay. Traffic between other pairs never leaves the
    kernel. The tap port neither learns nor floods, so the bridge sends nothing else to it.
    """

    def __init__(self, ul_netns: str, bridge: str):
        self.ul_netns = ul_netns
        self.bridge = bridge
        self.proc: subprocess.Popen | None = None
        self._taps: set[str] = set()
        self._filters: dict[tuple[str, str], int] = {}  # (port, dst ip) -> u32 prio
        self._next_prio = 10

    def set(self, port: str, tap: str, dst_ips: list[str], ms: float) -> None:
        """Delay frames entering the bridge on ``port`` towards ``dst_ips`` by ``ms``."""
        self._ensure_process()
        self._ensure_tap(tap)
        for dst in dst_ips:
            self._command(f"delay {tap} {dst} {ms}")
            key = (port, dst)
            if ms > 0 and key not in self._filters:
                self._add_filter(port, tap, dst)
            elif ms <= 0 and key in self._filters:
                self._del_filter(port, dst)

    def close(self) -> None:
        """Stop the delay line process (the namespace teardown removes taps and filters)."""
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def keep_after_exit(self) -> bool:
        """Keep the delay line running after this process exits; False if none runs.

        The delay line stops when its command pipe closes, which happens when this process
        exits; a sleeping process in the underlay namespace holds the pipe open. Both go with
        the namespace (``testbed.cleanup`` kills every process in a run's namespaces).
        """
        if self.proc is None or self.proc.poll() is not None or self.proc.stdin is None:
            return False
        fd = open_netns(self.ul_netns)
        try:
            subprocess.Popen(
                ["sleep", "infinity"],
                pass_fds=(self.proc.stdin.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=lambda: setns(fd),  # noqa: PLW1509 - only a setns() in the child
            )
        finally:
            os.close(fd)
        LOG.info("delay line in %s kept for after this process", self.ul_netns)
        return True

    def _ensure_process(self) -> None:
        if self.proc is None:
            self.proc = procs.spawn(
                self.ul_netns, [sys.executable, DELAYLINE], stdin_pipe=True, ready_line="ready"
            )
        if self.proc.poll() is not None:
            raise procs.ProcessError(f"delay line exited with {self.proc.returncode}")

    def _command(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().decode().strip()
        if answer != "ok":
            raise procs.ProcessError(
                f"delay line: {line!r}: {answer or 'no answer'} (exit status {self.proc.wait(1)})"
            )

    def _ensure_tap(self, tap: str) -> None:
        if tap in self._taps:
            return
        with iproute(self.ul_netns) as ipr:
            ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
            idx = ipr.link_lookup(ifname=tap)[0]
            master = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.link("set", index=idx, master=master, state="up")
            ipr.brport("set", index=idx, learning=0, unicast_flood=0, mcast_flood=0, bcast_flood=0)
        self._command(f"tap {tap}")
        self._taps.add(tap)

    def _add_filter(self, port: str, tap: str, dst: str) -> None:
        address = ipaddress.ip_address(dst)
        words = address.packed.hex()
        if address.version == 4:
            protocol, keys = ETH_P_IP, [f"0x{words}/0xffffffff+16"]
        else:
            protocol = ETH_P_IPV6
            keys = [f"0x{words[i * 8 : (i + 1) * 8]}/0xffffffff+{24 + 4 * i}" for i in range(4)]
        prio = self._next_prio
        self._next_prio += 1
        with iproute(self.ul_netns) as ipr:
            idx = ipr.link_lookup(ifname=port)[0]
            tap_idx = ipr.link_lookup(ifname=tap)[0]
            if not any(self._filters_on(port)):
                ipr.tc("add", "clsact", index=idx)
            ipr.tc(
                "add-filter",
                "u32",
                index=idx,
                parent=TC_H_CLSACT_INGRESS,
                prio=prio,
                protocol=protocol,
                target=0x10001,
                keys=keys,
                action={
                    "kind": "mirred",
                    "direction": "egress",
                    "action": "redirect",
                    "ifindex": tap_idx,
                },
            )
        self._filters[(port, dst)] = prio
        LOG.debug("delay filter on %s to %s (prio %d)", port, dst, prio)

    def _del_filter(self, port: str, dst: str) -> None:
        prio = self._filters.pop((port, dst))
        protocol = ETH_P_IP if ipaddress.ip_address(dst).version == 4 else ETH_P_IPV6
        with iproute(self.ul_netns) as ipr:
            idx = ipr.link_lookup(ifname=port)[0]
            # Any kind-specific options would be parsed for a delete too: pass none.
            ipr.tc(
                "del-filter", index=idx, parent=TC_H_CLSACT_INGRESS, prio=prio, protocol=protocol
            )

    def _filters_on(self, port: str):
        return (p for (name, _), p in self._filters.items() if name == port)
