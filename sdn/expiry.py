"""Which on-demand services went unused: packet counters of their flows, read from the switch.

A service's flows carry its owner id in the high half of their cookies, so one flow-stats
request per service reads them all (the new-connection flows of its service IPs and instance
IPs, the routes to its remote instances). A service is idle once none of its counters moved
for ``idle_s``; a flow replaced meanwhile (new cookie) counts as moved when it saw a packet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sdn.spec import owner_id, service_owner

LOG = logging.getLogger(__name__)

OWNER_MASK = 0xFFFFFFFF00000000  # the owner half of a flow cookie


class IdleWatch:
    """Calls ``expire(name)`` for each candidate service whose flows saw no packet lately."""

    def __init__(
        self,
        idle_s: float,
        candidates: Callable[[], list[str]],
        expire: Callable[[str], None],
    ):
        self.idle_s = idle_s
        self.candidates = candidates
        self.expire = expire
        self.switch = None  # sdn.switch.Switch
        self._seen: dict[str, tuple[dict[int, int], float]] = {}  # counters, last activity
        self._stop = threading.Event()

    def start(self) -> None:
        """Check every quarter of ``idle_s`` (0.5 s to 10 s) on a thread."""
        threading.Thread(target=self._run, name="interest-expiry", daemon=True).start()

    def stop(self) -> None:
        """Stop checking."""
        self._stop.set()

    def check(self, switch, now: float | None = None) -> list[str]:
        """Read the candidates' counters once; expire the idle ones; their names."""
        now = time.monotonic() if now is None else now
        names = self.candidates()
        self._seen = {n: s for n, s in self._seen.items() if n in names}
        idle = []
        for name in names:
            counts = switch.flow_counts(owner_id(service_owner(name)) << 32, OWNER_MASK)
            seen = self._seen.get(name)
            if seen is None or any(n > seen[0].get(c, 0) for c, n in counts.items()):
                self._seen[name] = (counts, now)
            elif now - seen[1] >= self.idle_s:
                del self._seen[name]
                idle.append(name)
            else:
                self._seen[name] = (counts, seen[1])
        for name in idle:
            self.expire(name)
        return idle

    def _run(self) -> None:
        interval = max(0.5, min(self.idle_s / 4, 10.0))
        while not self._stop.wait(interval):
            switch = self.switch
            if switch is None or not switch.connected():
                continue
            try:
                self.check(switch)
            except (RuntimeError, OSError) as exc:
                LOG.warning("interest expiry check failed: %s", exc)
