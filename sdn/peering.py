"""Cluster mode's peer upkeep: learn nodes whose BFD reaches the any-peer port, prune learned
peers whose session went down, and announce this node on the underlay now and then.

Learning makes OVSDB calls, so the OpenFlow thread only queues the address (``seen``); one
thread of this module does the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

LOG = logging.getLogger(__name__)

CHECK_S = 2.0  # how often learned peers are checked
ANNOUNCE_EVERY = 5  # checks between two announcements of this node on the underlay


class Peering:
    """Runs ``agent.learn_peer`` / ``agent.prune_peers`` / ``agent.ops.announce`` on a thread;
    ``changed`` is called when the learned peers changed (they are saved)."""

    def __init__(self, agent, changed: Callable[[], None]):
        self.agent = agent
        self.changed = changed
        self._cond = threading.Condition()
        self._queued: set[str] = set()
        self._stop = threading.Event()

    def seen(self, node_ip: str) -> None:
        """A node's BFD reached the any-peer port (OpenFlow thread: only queue it)."""
        with self._cond:
            if node_ip not in self._queued and node_ip not in self.agent.peers:
                self._queued.add(node_ip)
                self._cond.notify_all()

    def start(self) -> None:
        """Announce this node, then start the thread."""
        self.agent.ops.announce()
        threading.Thread(target=self._run, name="cluster-peers", daemon=True).start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        ticks = 0
        while not self._stop.is_set():
            with self._cond:
                if not self._queued:
                    self._cond.wait(CHECK_S)
                batch, self._queued = sorted(self._queued), set()
            if self._stop.is_set():
                return
            for node_ip in batch:
                self.agent.learn_peer(node_ip)
            if batch:
                self.changed()
                continue
            ticks += 1
            if ticks % ANNOUNCE_EVERY == 0:
                self.agent.ops.announce()
            before = sorted(self.agent.tunnels.learned)
            if before:
                self.agent.prune_peers()
                if sorted(self.agent.tunnels.learned) != before:
                    self.changed()
