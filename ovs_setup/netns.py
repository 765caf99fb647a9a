"""Network namespace handles: resolve, validate, and run short work inside one."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

LOG = logging.getLogger(__name__)

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
# ioctl on an nsfs file descriptor that returns the namespace type (Linux >= 4.11).
NS_GET_NSTYPE = 0xB703

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(ValueError):
    """A namespace reference that does not name an existing network namespace."""


def netns_path(netns: str | int) -> str:
    """Return the nsfs path of a netns given as path, `ip netns` name or PID."""
    if isinstance(netns, bool):
        raise NetnsError(f"netns: expected a path, name or PID, got {netns!r}")
    if isinstance(netns, int) or (isinstance(netns, str) and netns.isdigit()):
        pid = int(netns)
        if pid <= 0:
            raise NetnsError(f"netns: PID must be positive, got {pid}")
        return f"/proc/{pid}/ns/net"
    if not isinstance(netns, str) or not netns:
        raise NetnsError(f"netns: expected a path, name or PID, got {netns!r}")
    if "/" not in netns:
        return os.path.join(NETNS_RUN_DIR, netns)
    return netns


def open_netns(netns: str | int) -> int:
    """Open a network namespace read-only and return its fd; raise NetnsError if it is not one."""
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(f"netns {netns!r}: cannot open {path}: {exc.strerror}") from exc
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        raise NetnsError(f"netns {netns!r}: {path} is not a namespace file") from exc
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise NetnsError(f"netns {netns!r}: {path} is not a network namespace")
    return fd


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns: str | int | None, func: Callable[[], None]) -> None:
    """Run ``func`` here when ``netns`` is None, else in a child inside ``netns``."""
    if netns is None:
        func()
    else:
        run_in_netns(netns, func)


def run_in_netns(netns: str | int, func: Callable[[], None]) -> None:
    """Run ``func`` in a forked child that entered ``netns``; raise if it fails."""
    fd = open_netns(netns)
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # child: never return into the caller's stack
            status = 0
            try:
                os.close(read_end)
                setns(fd)
                func()
            except BaseException:  # noqa: BLE001 - everything must reach the parent
                os.write(write_end, traceback.format_exc(limit=3).encode()[-2000:])
                status = 1
            os._exit(status)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            message = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(f"in netns {netns!r}: {message.strip() or 'child failed'}")
    finally:
        os.close(fd)
        for end in (read_end, write_end):
            if end >= 0:
                os.close(end)


def write_sysctl(netns: str | int | None, key: str, value: str) -> None:
    """Write a sysctl given as path under /proc/sys (``net/ipv6/conf/eth0/accept_dad``)."""
    path = os.path.join("/proc/sys", key)

    def _write() -> None:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(value)

    in_netns(netns, _write)


@contextmanager
def iproute(netns: str | int | None = None) -> Iterator[IPRoute]:
    """Yield a pyroute2 IPRoute bound to ``netns`` (None: the current namespace)."""
    if netns is None:
        ipr = IPRoute()
    else:
        fd = open_netns(netns)  # validates; pyroute2 would create a missing named netns
        os.close(fd)
        ipr = IPRoute(netns=netns_path(netns), flags=0)
    try:
        yield ipr
    finally:
        ipr.close()


def netns_socket(netns: str | int | None, family: int, kind: int) -> socket.socket:
    """Return a socket created inside ``netns`` (None: the current namespace)."""
    if netns is None:
        return socket.socket(family, kind)
    open_and_close = open_netns(netns)
    os.close(open_and_close)
    return pr_netns.create_socket(netns_path(netns), family, kind, flags=0)


def create_named(name: str) -> None:
    """Create an `ip netns`-compatible named network namespace; fail if it exists."""
    path = os.path.join(NETNS_RUN_DIR, name)
    if os.path.exists(path):
        raise FileExistsError(f"netns {name} exists")
    pr_netns.create(name)
    LOG.info("created netns %s", name)


def remove_named(name: str) -> bool:
    """Remove a named network namespace if it exists; return whether it did."""
    path = os.path.join(NETNS_RUN_DIR, name)
    if not os.path.exists(path):
        return False
    pr_netns.remove(name)
    LOG.info("removed netns %s", name)
    return True


def list_named() -> list[str]:
    """Return the names of the `ip netns` namespaces."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []
