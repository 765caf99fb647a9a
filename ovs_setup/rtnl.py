"""A small rtnetlink client: the link, address and route requests a container attach makes."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ovs_setup.netns import in_netns

LOG = logging.getLogger(__name__)

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an error message: the request's body is left out
NLM_F_ACK_TLVS = 0x200  # in an error message: extended-ack attributes follow
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR = 20
RTM_NEWROUTE = 24

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
IFF_UP = 0x1
IFA_F_NODAD = 0x2
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
LOOPBACK_INDEX = 1  # the kernel gives every namespace's lo index 1

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_RECV_SIZE = 65536


@dataclass(frozen=True)
class Link:
    """A network device as the kernel names it: index and MAC address (None: it has none)."""

    index: int
    mac: str | None


class RtnlError(OSError):
    """The kernel refused a request; ``errno`` is its error, the text says what was asked."""


def attr(kind: int, value: bytes) -> bytes:
    """Return one netlink attribute (type-length-value, padded to 4 bytes)."""
    length = _RTATTR.size + len(value)
    return _RTATTR.pack(length, kind) + value + b"\0" * (-length % 4)


def _name(name: str) -> bytes:
    return attr(IFLA_IFNAME, name.encode() + b"\0")


def _mac(mac: str) -> bytes:
    return attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))


def _u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


class Rtnl:
    """A route netlink socket of one network namespace; requests wait for the kernel's answer."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._seq = 0
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError:
                LOG.debug("netlink option %d not supported", option)
        try:
            sock.bind((0, 0))
        except OSError:
            sock.close()
            raise

    @classmethod
    def open(cls, netns: str | int | None = None) -> Rtnl:
        """Open a socket in ``netns`` (path, name or PID; None: the calling thread's)."""
        return cls(in_netns(netns, _new_socket))

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> Rtnl:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- links -------------------------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        """Return the index and MAC of the link ``name``, None if there is none."""
        body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _name(name)
        try:
            replies = self._request(RTM_GETLINK, 0, body, f"looking up {name}")
        except RtnlError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        for kind, payload in replies:
            if kind == RTM_NEWLINK:
                index = _IFINFOMSG.unpack_from(payload)[2]
                raw = dict(_attrs(payload[_IFINFOMSG.size :])).get(IFLA_ADDRESS)
                return Link(index, ":".join(f"{b:02x}" for b in raw) if raw else None)
        return None

    def link_index(self, name: str) -> int | None:
        """Return the index of the link ``name``, None if there is none."""
        found = self.link(name)
        return found.index if found else None

    def add_veth(
        self,
        name: str,
        peer: str,
        mtu: int,
        peer_mac: str | None = None,
        peer_netns_fd: int | None = None,
        up: bool = False,
    ) -> None:
        """Create the veth pair ``name``/``peer`` (the peer in ``peer_netns_fd`` if given)."""
        peer_attrs = _name(peer) + _u32(IFLA_MTU, mtu)
        if peer_mac:
            peer_attrs += _mac(peer_mac)
        if peer_netns_fd is not None:
            peer_attrs += _u32(IFLA_NET_NS_FD, peer_netns_fd)
        data = attr(VETH_INFO_PEER, _IFINFOMSG.pack(0, 0, 0, 0, 0) + peer_attrs)
        info = attr(IFLA_INFO_KIND, b"veth\0") + attr(IFLA_INFO_DATA, data)
        flags = IFF_UP if up else 0
        body = _IFINFOMSG.pack(0, 0, 0, flags, flags)
        body += _name(name) + _u32(IFLA_MTU, mtu) + attr(IFLA_LINKINFO, info)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"creating veth {name}/{peer}")

    def set_link(self, index: int, up: bool | None = None, mtu: int | None = None) -> None:
        """Change the state (up or down) and/or the MTU of the link ``index``."""
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = _IFINFOMSG.pack(0, 0, index, flags, change)
        if mtu is not None:
            body += _u32(IFLA_MTU, mtu)
        self._request(RTM_SETLINK, 0, body, f"setting link {index}")

    def delete_link(self, name: str) -> bool:
        """Delete the link ``name`` (a veth takes its peer along); False if there was none."""
        body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _name(name)
        try:
            self._request(RTM_DELLINK, 0, body, f"deleting {name}")
        except RtnlError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    # -- addresses and routes ----------------------------------------------------------------

    def add_address(
        self,
        index: int,
        address: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
        nodad: bool = False,
    ) -> None:
        """Add ``address`` (with its prefix length) to the link ``index``."""
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        flags = IFA_F_NODAD if nodad else 0
        packed = address.ip.packed
        body = _IFADDRMSG.pack(family, address.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index)
        body += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"adding {address}")

    def add_default_route(
        self,
        index: int,
        gateway: ipaddress.IPv4Address | ipaddress.IPv6Address,
        onlink: bool = True,
    ) -> None:
        """Add a default route via ``gateway`` out of the link ``index``."""
        family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(
            family,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
            RTNH_F_ONLINK if onlink else 0,
        )
        body += attr(RTA_GATEWAY, gateway.packed) + _u32(RTA_OIF, index)
        self._request(
            RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"adding default route via {gateway}"
        )

    # -- wire --------------------------------------------------------------------------------

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        """Send one request and return the messages answering it (raise on the kernel's no)."""
        self._seq += 1
        seq = self._seq
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0
        )
        self.sock.send(header + body)
        replies = []
        while True:
            data = self.sock.recv(_RECV_SIZE)
            for msg_kind, msg_flags, msg_seq, payload in _messages(data):
                if msg_seq != seq:
                    continue  # the answer to an earlier request that gave up
                if msg_kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise _error(code, msg_flags, payload, what)
                    return replies
                if msg_kind == NLMSG_DONE:
                    return replies
                replies.append((msg_kind, payload))


def _new_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)


def _messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return
        yield kind, flags, seq, data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            return
        yield kind & 0x3FFF, data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3


def _error(code: int, flags: int, payload: bytes, what: str) -> RtnlError:
    """The kernel's error with its extended-ack text when it gave one."""
    detail = ""
    if flags & NLM_F_ACK_TLVS:
        # The error code, then the request: its header only, or all of it (no NETLINK_CAP_ACK).
        echoed = _NLMSGHDR.size if flags & NLM_F_CAPPED else _NLMSGHDR.unpack_from(payload, 4)[0]
        for kind, value in _attrs(payload[4 + ((echoed + 3) & ~3) :]):
            if kind == NLMSGERR_ATTR_MSG:
                text = value.rstrip(b"\0").decode(errors="replace")
                detail = f" ({text})"
    return RtnlError(code, f"{what}: {os.strerror(code)}{detail}")
