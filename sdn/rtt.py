"""Round-trip times to the peer nodes, measured over the underlay with a tiny UDP echo.

Every agent answers probes on ``<node_ip>:<rtt_port>`` and probes each peer once per
interval. Samples are smoothed (EWMA); the costs handed to the pipeline change only when the
ranking of the peers changes by a clear margin, so near-equal peers do not make the closest
groups flap.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)

_MAGIC = b"OKRT"
_PROBE, _ECHO = 1, 2
_FMT = "!4sBIQ"  # magic, kind, sequence, send time (ns, prober's clock)
_SIZE = struct.calcsize(_FMT)
ALPHA = 0.3  # EWMA weight of a new sample
# Seconds without any answer after which a peer counts as unreachable. Long on purpose: BFD
# fails a dead node over in the datapath within a second; this only re-ranks, and a peer's
# agent restarting (its responder away for seconds) must not re-order anyone's groups.
LOST_AFTER_S = 30.0
MARGIN_MS = 1.0  # a peer overtakes another only when better by this much ...
MARGIN_RATIO = 0.25  # ... or by this share of the other's RTT, whichever is larger,
STABLE_S = 2.0  # ... for this long (one slow sample must not re-rank)


class RttMeter:
    """Echo responder and prober on one UDP socket bound to the node's underlay address."""

    def __init__(
        self,
        node_ip: str,
        peers: list[str],
        port: int,
        interval: float,
        on_change: Callable[[dict[str, float]], None] | None = None,
        initial: dict[str, float] | None = None,
    ):
        self.node_ip = node_ip
        self.peers = list(peers)
        self.port = port
        self.interval = interval
        self.on_change = on_change
        # ``initial``: the costs the agent already uses (the last run's ranking), so that the
        # first samples only publish a ranking that really differs.
        initial = initial or {}
        self.smoothed: dict[str, float] = {p: initial.get(p, math.inf) for p in self.peers}
        self.published: dict[str, float] = dict(self.smoothed)
        self._sent: dict[str, tuple[int, int]] = {}  # peer -> (seq, send ns)
        self._answered: dict[str, float] = {p: time.monotonic() for p in self.peers}
        self._lock = threading.Lock()
        self._differs_since: float | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Bind and start the responder and prober threads."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.node_ip, self.port))
        self._sock.settimeout(0.5)
        for target, name in ((self._receive, "rtt-recv"), (self._probe, "rtt-probe")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        LOG.info(
            "RTT meter on %s:%d probing %s",
            self.node_ip,
            self.port,
            ", ".join(self.peers) or "no peers",
        )

    def stop(self) -> None:
        """Stop the threads and close the socket."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()

    def set_peers(self, peers: list[str]) -> None:
        """Probe ``peers`` from now on (new ones start unmeasured, gone ones are forgotten)."""
        with self._lock:
            for peer in peers:
                if peer not in self.smoothed:
                    self.smoothed[peer] = math.inf
                    self.published[peer] = math.inf
                    self._answered[peer] = time.monotonic()
            for peer in [p for p in self.smoothed if p not in peers]:
                for table in (self.smoothed, self.published, self._answered, self._sent):
                    table.pop(peer, None)
            self.peers = list(peers)

    def snapshot(self) -> dict[str, float]:
        """The current smoothed RTT (ms) per peer."""
        with self._lock:
            return dict(self.smoothed)

    # -- threads ---------------------------------------------------------------------------

    def _probe(self) -> None:
        seq = int.from_bytes(os.urandom(3), "big")
        while not self._stop.is_set():
            changed = False
            for peer in list(self.peers):
                seq = (seq + 1) & 0xFFFFFFFF
                with self._lock:
                    if peer not in self._answered:
                        continue  # removed meanwhile
                    silent = time.monotonic() - self._answered[peer]
                    if silent > LOST_AFTER_S and self.smoothed[peer] != math.inf:
                        LOG.info("peer %s: no RTT answer for %.0f s", peer, silent)
                        self.smoothed[peer] = math.inf
                        changed = True
                    now = time.monotonic_ns()
                    self._sent[peer] = (seq, now)
                try:
                    self._sock.sendto(
                        struct.pack(_FMT, _MAGIC, _PROBE, seq, now), (peer, self.port)
                    )
                except OSError as exc:
                    LOG.debug("RTT probe to %s: %s", peer, exc)
            if changed:
                self._maybe_publish()
            self._stop.wait(self.interval)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(64)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if len(data) != _SIZE:
                continue
            magic, kind, seq, sent_ns = struct.unpack(_FMT, data)
            if magic != _MAGIC:
                continue
            if kind == _PROBE:
                try:
                    self._sock.sendto(struct.pack(_FMT, _MAGIC, _ECHO, seq, sent_ns), addr)
                except OSError as exc:
                    LOG.debug("RTT echo to %s: %s", addr, exc)
            elif kind == _ECHO:
                self._sample(addr[0], seq, sent_ns)

    def _sample(self, peer: str, seq: int, sent_ns: int) -> None:
        with self._lock:
            if self._sent.get(peer, (None,))[0] != seq:
                return  # late answer to an older probe
            del self._sent[peer]
            self._answered[peer] = time.monotonic()
            rtt = (time.monotonic_ns() - sent_ns) / 1e6
            old = self.smoothed.get(peer, math.inf)
            self.smoothed[peer] = rtt if old == math.inf else (1 - ALPHA) * old + ALPHA * rtt
        self._maybe_publish()

    def _maybe_publish(self) -> None:
        with self._lock:
            if not ranking_changed(self.published, self.smoothed):
                self._differs_since = None
                return
            now = time.monotonic()
            if not reachability_changed(self.published, self.smoothed):
                if self._differs_since is None:
                    self._differs_since = now
                if now - self._differs_since < STABLE_S:
                    return
            self._differs_since = None
            self.published = dict(self.smoothed)
            costs = dict(self.published)
        LOG.info(
            "peer ranking by RTT: %s",
            ", ".join(f"{p} {c:.2f}ms" for p, c in sorted(costs.items(), key=lambda kv: kv[1])),
        )
        if self.on_change is not None:
            self.on_change(costs)


def reachability_changed(published: dict[str, float], current: dict[str, float]) -> bool:
    """Whether a peer became reachable (first answer) or unreachable since ``published``."""
    return any(math.isinf(c) != math.isinf(current.get(p, math.inf)) for p, c in published.items())


def ranking_changed(published: dict[str, float], current: dict[str, float]) -> bool:
    """Whether ``current`` orders the peers differently from ``published`` by a clear margin."""
    peers = sorted(published, key=lambda p: published[p])
    for i, a in enumerate(peers):
        for b in peers[i + 1 :]:
            ca, cb = current.get(a, math.inf), current.get(b, math.inf)
            if math.isinf(published[a]) != math.isinf(ca) or math.isinf(
                published[b]
            ) != math.isinf(cb):
                return True
            if math.isinf(ca) or math.isinf(cb):
                continue
            if ca - cb > max(MARGIN_MS, MARGIN_RATIO * ca):
                return True
    return False
