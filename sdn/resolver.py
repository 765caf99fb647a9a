"""On-demand resolution of unknown semantic addresses punted by the pipeline (``punt:unknown``).

The first packet of a new connection to an address the node does not know comes to the agent.
A worker thread asks the cluster who owns the address; once the flows are installed the very
same packet is sent through the pipeline again (packet-out to TABLE with its original in_port),
so the first SYN is not lost. Packets to the same address that arrive meanwhile wait for the
same answer (one query per address). An address the cluster does not know, or that could not
be asked, is refused (RST / ICMP unreachable) and refused unasked for ``negative_s`` seconds,
so a scan cannot flood the managers. ``on_unknown`` runs on the OpenFlow event thread and
never blocks.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

LOG = logging.getLogger(__name__)

ETH_IP, ETH_IPV6 = 0x0800, 0x86DD
MAX_WAITING_PACKETS = 16  # per address: later ones are dropped (the client retransmits)
MAX_ADDRESSES = 256  # addresses being resolved at once; more are refused at once
MAX_NEGATIVE = 4096  # negative cache entries


def destination(frame: bytes) -> str | None:
    """The destination IP address of an Ethernet frame (IPv4 or IPv6), else None."""
    if len(frame) < 14:
        return None
    (eth_type,) = struct.unpack_from("!H", frame, 12)
    if eth_type == ETH_IP and len(frame) >= 34:
        return str(ipaddress.IPv4Address(frame[30:34]))
    if eth_type == ETH_IPV6 and len(frame) >= 54:
        return str(ipaddress.IPv6Address(frame[38:54]))
    return None


class Resolver:
    """Resolves punted addresses with ``lookup`` and re-injects or rejects their packets."""

    def __init__(
        self,
        lookup: Callable[[str], bool],
        reinject: Callable[[bytes, int], None],
        reject: Callable[[bytes, int], None],
        negative_s: float,
        workers: int = 4,
    ):
        self.lookup = lookup
        self.reinject = reinject
        self.reject = reject
        self.negative_s = negative_s
        self.resolved = 0
        self.refused = 0
        self._waiting: dict[str, list[tuple[bytes, int]]] = {}
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="resolve")

    def on_unknown(self, frame: bytes, in_port: int) -> None:
        """A packet to an unknown address: queue it for resolution, or refuse it now."""
        addr = destination(frame)
        refuse = addr is None
        if addr is not None:
            now = time.monotonic()
            with self._lock:
                until = self._negative.get(addr)
                if until is not None and until > now:
                    refuse = True
                elif addr in self._waiting:
                    if len(self._waiting[addr]) < MAX_WAITING_PACKETS:
                        self._waiting[addr].append((frame, in_port))
                    return
                elif len(self._waiting) >= MAX_ADDRESSES:
                    refuse = True
                else:
                    self._negative.pop(addr, None)
                    self._waiting[addr] = [(frame, in_port)]
                    self._pool.submit(self._resolve, addr)
        if refuse:
            with self._lock:
                self.refused += 1
            LOG.debug("packet to %s refused", addr)
            self.reject(frame, in_port)

    def status(self) -> dict:
        """Counters for the health endpoint."""
        with self._lock:
            now = time.monotonic()
            return {
                "resolved": self.resolved,
                "refused": self.refused,
                "resolving": len(self._waiting),
                "negative": sum(1 for t in self._negative.values() if t > now),
            }

    def close(self) -> None:
        """Stop taking work (running lookups finish on their own)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _resolve(self, addr: str) -> None:
        started = time.monotonic()
        try:
            known = self.lookup(addr)
        except Exception:
            # Whatever went wrong, the waiting packets are refused, never left hanging.
            LOG.exception("resolving %s failed", addr)
            known = False
        with self._lock:
            packets = self._waiting.pop(addr, [])
            if known:
                self.resolved += 1
            else:
                self.refused += len(packets)
                self._negative[addr] = time.monotonic() + self.negative_s
                self._negative.move_to_end(addr)
                while len(self._negative) > MAX_NEGATIVE:
                    self._negative.popitem(last=False)
        LOG.debug(
            "%s %s in %.1f ms: %d packets %s",
            addr,
            "resolved" if known else "unknown",
            (time.monotonic() - started) * 1000,
            len(packets),
            "re-injected" if known else "refused",
        )
        for frame, in_port in packets:
            (self.reinject if known else self.reject)(frame, in_port)
