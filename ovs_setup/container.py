"""Attach a container's network namespace to a bridge with a veth pair, and detach it."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
from dataclasses import dataclass

from pyroute2.ethtool.ioctl import IoctlEthtool

from ovs_setup import ovsdb
from ovs_setup.bridge import IFNAMSIZ, remove_port
from ovs_setup.netns import (
    NetnsError,
    call_in_netns_fd,
    in_netns,
    netns_path,
    open_netns,
    write_sysctl,
)
from ovs_setup.rtnl import LOOPBACK_INDEX, Rtnl, RtnlError

LOG = logging.getLogger(__name__)

# Bytes a tunnel adds in front of the inner Ethernet frame (outer IP + UDP/GRE + header).
_TUNNEL_OVERHEAD = {"vxlan": 8 + 8 + 14, "geneve": 8 + 8 + 14, "gre": 4 + 4 + 14}
_IP_HEADER = {False: 20, True: 40}
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class AttachError(RuntimeError):
    """Attaching a container failed; nothing of the attempt is left behind."""


@dataclass(frozen=True)
class AttachedPort:
    """A container's veth as seen from the bridge: port, OpenFlow number, container MAC, IPs."""

    port_name: str
    ofport: int
    mac: str
    namespace_ip: str | None
    namespace_ip_v6: str | None


def container_mtu(underlay_mtu: int, kind: str = "vxlan", ipv6_underlay: bool = False) -> int:
    """Return the container MTU that fits a tunnelled frame into ``underlay_mtu``."""
    if kind not in _TUNNEL_OVERHEAD:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(_TUNNEL_OVERHEAD)}")
    return underlay_mtu - _TUNNEL_OVERHEAD[kind] - _IP_HEADER[ipv6_underlay]


def attach_container(
    db_url: str,
    bridge: str,
    netns: str | int,
    port_name: str,
    ipv4_cidr: str | None,
    ipv6_cidr: str | None,
    gateway_v4: str | None,
    gateway_v6: str | None,
    mtu: int,
    ofport: int | None = None,
    external_ids: dict | None = None,
    ifname: str = "eth0",
    mac: str | None = None,
    node_netns: str | int | None = None,
) -> AttachedPort:
    """Connect ``netns`` to ``bridge`` by a veth pair; all or nothing.

    ``netns`` is a namespace path (/run/netns/x, /proc/PID/ns/net), an `ip netns` name or a
    PID. The host end ``port_name`` goes on the bridge (in ``node_netns``, default: the current
    namespace, which must be the one ovs-vswitchd runs in); the peer becomes ``ifname`` in the
    container with the addresses, default routes via the gateways (on-link) and ``mtu``. On
    any failure everything made so far is removed and AttachError says what went wrong.
    """
    v4, v6, gw4, gw6 = _validate(
        port_name, ifname, ipv4_cidr, ipv6_cidr, gateway_v4, gateway_v6, mtu, mac, ofport
    )
    try:
        fd = open_netns(netns)
    except NetnsError as exc:
        raise AttachError(str(exc)) from exc
    host = None
    try:
        api = ovsdb.get_api(db_url)
        host = Rtnl.open(node_netns)
        _check_port_free(api, host, db_url, bridge, port_name)
    except BaseException:
        os.close(fd)
        if host is not None:
            host.close()
        raise

    made_veth = made_port = False
    try:
        # The peer is made in the container under its final name: no move, no rename.
        try:
            host.add_veth(port_name, ifname, mtu, peer_mac=mac, peer_netns_fd=fd, up=True)
        except RtnlError as exc:
            if exc.errno == errno.EEXIST and _has_link(fd, ifname):
                raise AttachError(f"ifname: {ifname} exists in netns {netns!r}") from exc
            raise
        made_veth = True
        container_mac = call_in_netns_fd(
            fd, lambda: _configure_container(netns, ifname, v4, v6, gw4, gw6)
        )
        # The userspace datapath forwards frames as they are: a partial checksum left to
        # offload would reach the other side unfinished and TCP would drop it.
        # Nothing crosses the host end before its OVS port exists, so it can be up already.
        in_netns(node_netns, lambda: disable_tx_checksum(port_name))

        columns: dict = {"external_ids": {str(k): str(v) for k, v in (external_ids or {}).items()}}
        if ofport is not None:
            columns["ofport_request"] = [ofport]
        ovsdb.commit(api, ovsdb.EnsurePort(api, bridge, port_name, columns, may_exist=False))
        made_port = True
        number = ovsdb.wait_ofport(api, port_name)
        if ofport is not None and number != ofport:
            # OVS silently numbers the port otherwise when the requested ofport is taken.
            raise AttachError(f"ofport: {ofport} is taken (OVS gave {port_name} {number})")
    except Exception as exc:
        _rollback(db_url, bridge, port_name, host, made_veth, made_port)
        if isinstance(exc, AttachError):
            raise
        raise AttachError(f"attaching {netns!r} as {port_name} failed: {exc}") from exc
    finally:
        os.close(fd)
        host.close()

    LOG.info(
        "attached %s as %s (ofport %d, %s %s)",
        netns_path(netns),
        port_name,
        number,
        v4 or "-",
        v6 or "-",
    )
    return AttachedPort(
        port_name=port_name,
        ofport=number,
        mac=container_mac,
        namespace_ip=str(v4.ip) if v4 else None,
        namespace_ip_v6=str(v6.ip) if v6 else None,
    )


def detach_container(
    db_url: str, bridge: str, port_name: str, node_netns: str | int | None = None
) -> None:
    """Remove the container's OVS port and its veth pair; do nothing for what is gone."""
    had_port = ovsdb.find_interface(ovsdb.get_api(db_url), port_name) is not None
    remove_port(db_url, bridge, port_name)
    with Rtnl.open(node_netns) as host:
        had_veth = host.delete_link(port_name)
    if had_port or had_veth:
        LOG.info("detached %s from %s", port_name, bridge)


def disable_tx_checksum(*names: str) -> None:
    """Turn tx checksum offload off on devices of the current namespace (ethtool -K tx off)."""
    ethtool = IoctlEthtool()
    try:
        for name in names:
            ethtool.change_ifname(name)
            ethtool.set_offload_flag("tx-checksumming", 0)
    finally:
        ethtool.close()


# -- helpers ---------------------------------------------------------------------------------


def _validate(port_name, ifname, ipv4_cidr, ipv6_cidr, gateway_v4, gateway_v6, mtu, mac, ofport):
    for field, name in (("port_name", port_name), ("ifname", ifname)):
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= IFNAMSIZ
            or "/" in name
            or name in (".", "..")
        ):
            raise AttachError(f"{field}: {name!r} is not a valid interface name")
    v4 = _parse(ipv4_cidr, 4, "ipv4_cidr", ipaddress.ip_interface)
    v6 = _parse(ipv6_cidr, 6, "ipv6_cidr", ipaddress.ip_interface)
    gw4 = _parse(gateway_v4, 4, "gateway_v4", ipaddress.ip_address)
    gw6 = _parse(gateway_v6, 6, "gateway_v6", ipaddress.ip_address)
    if gw4 is not None and v4 is None:
        raise AttachError("gateway_v4: given without ipv4_cidr")
    if gw6 is not None and v6 is None:
        raise AttachError("gateway_v6: given without ipv6_cidr")
    if not isinstance(mtu, int) or not (1280 if v6 else 68) <= mtu <= 65535:
        raise AttachError(f"mtu: {mtu!r} out of range")
    if mac is not None and not _MAC_RE.match(str(mac).lower()):
        raise AttachError(f"mac: {mac!r} is not a MAC address")
    if ofport is not None and (not isinstance(ofport, int) or not 1 <= ofport < 0xFF00):
        raise AttachError(f"ofport: {ofport!r} out of range")
    return v4, v6, gw4, gw6


def _parse(value, version, field, parser):
    if value is None:
        return None
    try:
        parsed = parser(value)
    except ValueError as exc:
        raise AttachError(f"{field}: {exc}") from exc
    if parsed.version != version:
        raise AttachError(f"{field}: {value} is not an IPv{version} address")
    return parsed


def _check_port_free(api, host: Rtnl, db_url: str, bridge: str, port_name: str) -> None:
    """Refuse a name in use; drop a stale OVS port whose veth is gone (left by a restart)."""
    if host.link_index(port_name) is not None:
        raise AttachError(f"port_name: a device {port_name} exists already")
    if ovsdb.find_interface(api, port_name) is not None:
        LOG.info("removing stale port %s (its veth is gone)", port_name)
        remove_port(db_url, bridge, port_name)


def _has_link(fd: int, name: str) -> bool:
    """Whether the namespace open as ``fd`` has a device ``name``."""

    def _lookup() -> bool:
        with Rtnl.open() as rtnl:
            return rtnl.link_index(name) is not None

    return call_in_netns_fd(fd, _lookup)


def _configure_container(netns, ifname: str, v4, v6, gw4, gw6) -> str:
    """Address, route and bring up the container's end; return its MAC.

    Runs on a thread inside the container's namespace: the netlink socket, the ethtool
    request and the sysctl file all belong to that namespace.
    """
    with Rtnl.open() as cip:
        link = cip.link(ifname)
        if link is None:
            raise AttachError(f"netns {netns!r}: the veth peer {ifname} did not arrive")
        if v6 is not None:
            # No DAD: the address is ours by allocation, and an NS from :: would be answered
            # by the pipeline's ND responder towards ::.
            write_sysctl(None, f"net/ipv6/conf/{ifname}/accept_dad", "0")
        disable_tx_checksum(ifname)
        cip.set_link(LOOPBACK_INDEX, up=True)
        if v4 is not None:
            cip.add_address(link.index, v4)
        if v6 is not None:
            cip.add_address(link.index, v6, nodad=True)
        cip.set_link(link.index, up=True)
        if gw4 is not None:
            cip.add_default_route(link.index, gw4, onlink=True)
        if gw6 is not None:
            cip.add_default_route(link.index, gw6, onlink=True)
        return str(link.mac)


def _rollback(db_url, bridge, port_name, host: Rtnl, made_veth: bool, made_port: bool) -> None:
    """Undo a failed attach; report (not raise) what could not be undone."""
    if made_port:
        try:
            remove_port(db_url, bridge, port_name)
        except Exception:
            LOG.exception("rollback: removing port %s failed", port_name)
    if made_veth:
        try:
            host.delete_link(port_name)  # takes the peer with it, wherever it is
        except Exception:
            LOG.exception("rollback: deleting veth %s failed", port_name)
    LOG.info("attach of %s failed and was rolled back", port_name)
