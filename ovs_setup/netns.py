"""Network namespace handles: resolve, validate, and run short work inside one."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

LOG = logging.getLogger(__name__)
T = TypeVar("T")

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


def in_netns(netns: str | int | None, func: Callable[[], T]) -> T:
    """Run ``func`` here when ``netns`` is None, else in a thread inside ``netns``."""
    if netns is None:
        return func()
    return call_in_netns(netns, func)


def call_in_netns(netns: str | int, func: Callable[[], T]) -> T:
    """Run ``func`` in a short-lived thread that entered ``netns``; return or raise its outcome.

    The calling thread never changes namespace. What the thread creates keeps the namespace
    it was made in after the thread ends: sockets (netlink too) and files opened under
    /proc/sys/net, which the kernel resolves by the opening thread's namespace.
    """
    fd = open_netns(netns)
    try:
        return call_in_netns_fd(fd, func)
    finally:
        os.close(fd)


def call_in_netns_fd(fd: int, func: Callable[[], T]) -> T:
    """``call_in_netns`` for a namespace already open as ``fd`` (left open)."""
    outcome: dict[str, object] = {}

    def _run() -> None:
        try:
            setns(fd)
            outcome["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            outcome["error"] = exc

    # The namespace change ends with the thread; the caller's thread stays where it is.
    thread = threading.Thread(target=_run, name="netns-call", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


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
