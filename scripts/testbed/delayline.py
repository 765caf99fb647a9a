"""Delay line for the underlay: holds frames from tap devices, then writes them back.

Run inside the underlay namespace. The testbed redirects (tc mirred) the frames of a delayed
host pair into a tap device that is a non-learning, non-flooding port of the underlay bridge;
this process reads each frame, waits the configured one-way delay for its destination IP and
writes it back into the same tap, from where the bridge forwards it on. It is used because the
kernel may lack sch_netem (and it gives the same result: a fixed extra delay per host pair).

It prints "ready" when it starts. Commands on stdin, one per line, each answered by "ok" or "error <reason>" on stdout:
  tap NAME                 attach to the existing tap device NAME
  delay NAME DST_IP MS     frames read from NAME towards DST_IP wait MS milliseconds (0: none)
"""

from __future__ import annotations

import fcntl
import heapq
import ipaddress
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


def open_tap(name: str) -> int:
    """Attach to tap device ``name`` and return its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def destination(frame: bytes) -> bytes | None:
    """Return the packed destination IP of an Ethernet frame, None if it is not IP."""
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_P_IP and len(frame) >= 34:
        return frame[30:34]
    if ethertype == ETH_P_IPV6 and len(frame) >= 54:
        return frame[38:54]
    return None


def main() -> int:
    """Serve commands on stdin and delay frames until stdin closes."""
    taps: dict[str, int] = {}
    delays: dict[int, dict[bytes, float]] = {}
    pending: list[tuple[float, int, int, bytes]] = []
    seq = 0
    stdin = sys.stdin.fileno()
    buffered = b""
    _say("ready")
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        ready, _, _ = select.select([stdin, *taps.values()], [], [], timeout)
        for fd in ready:
            if fd == stdin:
                chunk = os.read(stdin, 4096)
                if not chunk:
                    return 0
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    _say(command(line.decode().split(), taps, delays))
                continue
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                wait = delays[fd].get(destination(frame), 0.0)
                seq += 1
                heapq.heappush(pending, (time.monotonic() + wait, seq, fd, frame))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, fd, frame = heapq.heappop(pending)
            try:
                os.write(fd, frame)
            except OSError:
                pass  # the bridge port may be gone during teardown; the frame is lost


def command(words: list[str], taps: dict[str, int], delays: dict[int, dict]) -> str:
    """Apply one command line; return the answer line."""
    try:
        if words[:1] == ["tap"] and len(words) == 2:
            if words[1] not in taps:
                taps[words[1]] = open_tap(words[1])
                delays[taps[words[1]]] = {}
            return "ok"
        if words[:1] == ["delay"] and len(words) == 4:
            fd = taps[words[1]]
            dst = ipaddress.ip_address(words[2]).packed
            delays[fd][dst] = float(words[3]) / 1000.0
            return "ok"
    except (KeyError, ValueError, OSError) as exc:
        return f"error {exc}"
    return f"error unknown command {' '.join(words)!r}"


def _say(line: str) -> None:
    """Write one whole line to stdout in one system call (a reader waits for whole lines)."""
    os.write(1, (line + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
