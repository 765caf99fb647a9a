"""Reads one group of a bridge over its OpenFlow management socket, cheaply and often."""

from __future__ import annotations

import ipaddress
import socket
import struct

OFP15 = 0x06
OFPT_HELLO = 0
OFPT_ERROR = 1
OFPT_ECHO_REQUEST = 2
OFPT_ECHO_REPLY = 3
OFPT_MULTIPART_REQUEST = 18
OFPT_MULTIPART_REPLY = 19
OFPMP_GROUP_DESC = 7
OFPMPF_REPLY_MORE = 1
_HEADER = struct.Struct("!BBHI")


class GroupReader:
    """A persistent OpenFlow 1.5 connection to ``unix:PATH`` that fetches one group's
    description; ``ovs-ofctl dump-groups`` would cost a process start (tens of ms) per poll."""

    def __init__(self, mgmt_url: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(mgmt_url.removeprefix("unix:"))
        self._xid = 0
        self._send(OFPT_HELLO, b"")
        kind, _, _ = self._receive()
        if kind != OFPT_HELLO:
            raise ConnectionError(f"expected an OpenFlow hello, got type {kind}")

    def group_bytes(self, group_id: int) -> bytes:
        """The raw group description of ``group_id`` (empty when the group does not exist)."""
        body = struct.pack("!HH4xI4x", OFPMP_GROUP_DESC, 0, group_id)
        xid = self._send(OFPT_MULTIPART_REQUEST, body)
        parts = []
        while True:
            kind, got_xid, payload = self._receive()
            if got_xid != xid:
                continue
            if kind == OFPT_ERROR:
                return b""
            if kind == OFPT_MULTIPART_REPLY:
                _, flags = struct.unpack_from("!HH", payload)
                parts.append(payload[8:])
                if not flags & OFPMPF_REPLY_MORE:
                    return b"".join(parts)

    def has_address(self, group_id: int, address: str) -> bool:
        """Whether the group's buckets carry ``address`` (a NAT destination)."""
        return ipaddress.ip_address(address).packed in self.group_bytes(group_id)

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def _send(self, kind: int, body: bytes) -> int:
        self._xid += 1
        self.sock.sendall(_HEADER.pack(OFP15, kind, _HEADER.size + len(body), self._xid) + body)
        return self._xid

    def _receive(self) -> tuple[int, int, bytes]:
        while True:
            _, kind, length, xid = _HEADER.unpack(self._exactly(_HEADER.size))
            payload = self._exactly(length - _HEADER.size)
            if kind == OFPT_ECHO_REQUEST:
                self.sock.sendall(_HEADER.pack(OFP15, OFPT_ECHO_REPLY, length, xid) + payload)
                continue
            return kind, xid, payload

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the switch closed the management connection")
            data += chunk
        return data
