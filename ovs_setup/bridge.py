"""Bridges and tunnel ports of a node's OVS, through OVSDB; every function is idempotent."""

from __future__ import annotations

import ipaddress
import logging
import time

from ovsdbapp.backend.ovs_idl import idlutils

from ovs_setup import ovsdb
from ovs_setup.netns import iproute

LOG = logging.getLogger(__name__)

OF_PROTOCOLS = ["OpenFlow13", "OpenFlow14", "OpenFlow15"]
TUNNEL_KINDS = ("vxlan", "geneve", "gre")
BFD_INTERVAL_MS = 100
IFNAMSIZ = 15


def ensure_integration_bridge(
    db_url: str,
    bridge: str = "br-int",
    controller: str | list[str] | None = "tcp:127.0.0.1:6653",
    datapath_type: str = "netdev",
    bridge_mac: str | None = None,
) -> None:
    """Create or update the integration bridge: secure fail mode, OF1.3-1.5, controller set.

    The controller is written in the transaction that creates the bridge: OVS flushes every
    flow and group when a bridge's controller list turns from empty to non-empty, so it must
    never be toggled later. ``controller=None`` leaves the controllers as they are.
    """
    targets = [controller] if isinstance(controller, str) else controller
    other_config = {"disable-in-band": "true"}
    if bridge_mac:
        other_config["hwaddr"] = bridge_mac
    api = ovsdb.get_api(db_url)
    cmd = ovsdb.EnsureBridge(
        api,
        bridge,
        datapath_type,
        columns={"fail_mode": "secure", "protocols": OF_PROTOCOLS},
        other_config=other_config,
        controllers=targets,
        controller_columns={"connection_mode": "out-of-band"},
    )
    if ovsdb.commit(api, cmd):
        LOG.info("created bridge %s (controller %s)", bridge, ",".join(targets or []) or "-")


def ensure_underlay_bridge(
    db_url: str,
    bridge: str,
    uplink: str,
    addresses: list[str],
    datapath_type: str = "netdev",
    node_netns: str | int | None = None,
) -> None:
    """Create a bridge holding ``uplink`` with the node IPs (CIDR) on its internal port, up.

    The userspace datapath sends tunnel packets through the bridge that owns the route to the
    peer, so the node IP lives on this bridge and not on the uplink. ``node_netns`` names the
    namespace of the node's ovs-vswitchd when the caller runs elsewhere (tests, testbed).
    """
    networks = [ipaddress.ip_interface(a) for a in addresses]
    api = ovsdb.get_api(db_url)
    created = ovsdb.commit(
        api,
        ovsdb.EnsureBridge(
            api,
            bridge,
            datapath_type,
            columns={},
            other_config={},
            controllers=None,
            controller_columns={},
        ),
    )
    ovsdb.commit(api, ovsdb.EnsurePort(api, bridge, uplink, iface_columns={}))
    ovsdb.wait_ofport(api, uplink)

    with iproute(node_netns) as ipr:
        up_idx = _ifindex(ipr, uplink)
        br_idx = _wait_ifindex(ipr, bridge)
        for net in networks:
            # The address must not stay on the uplink as well: two routes to one subnet.
            if _has_address(ipr, up_idx, net):
                ipr.addr("del", index=up_idx, address=str(net.ip), prefixlen=net.network.prefixlen)
            if not _has_address(ipr, br_idx, net):
                flags = {"flags": 0x02} if net.version == 6 else {}  # IFA_F_NODAD
                ipr.addr(
                    "add",
                    index=br_idx,
                    address=str(net.ip),
                    prefixlen=net.network.prefixlen,
                    **flags,
                )
        ipr.link("set", index=up_idx, state="up")
        ipr.link("set", index=br_idx, state="up")
    if created:
        LOG.info("created underlay bridge %s on %s with %s", bridge, uplink, ", ".join(addresses))


def ensure_tunnel(
    db_url: str,
    bridge: str,
    port_name: str,
    remote_ip: str,
    kind: str = "vxlan",
    ofport: int | None = None,
    bfd: bool = True,
    key: str = "flow",
    options: dict[str, str] | None = None,
) -> int:
    """Create or update a tunnel port to one peer (BFD on by default); return its ofport."""
    ipaddress.ip_address(remote_ip)
    return _ensure_tunnel_port(
        db_url,
        bridge,
        port_name,
        kind,
        ofport,
        {"remote_ip": remote_ip, "key": key, **(options or {})},
        bfd=bfd,
    )


def ensure_flow_tunnel(
    db_url: str,
    bridge: str,
    port_name: str,
    kind: str = "vxlan",
    ofport: int | None = None,
    key: str = "flow",
) -> int:
    """Create or update a ``remote_ip=flow`` tunnel port (any peer, no BFD); return its ofport.

    It coexists with per-peer ports of the same kind: a packet from a peer that has its own
    port arrives on that port, one from any other address on this one.
    """
    return _ensure_tunnel_port(
        db_url, bridge, port_name, kind, ofport, {"remote_ip": "flow", "key": key}, bfd=False
    )


def remove_port(db_url: str, bridge: str, port_name: str) -> None:
    """Remove a port from the bridge if it is there."""
    api = ovsdb.get_api(db_url)
    api.del_port(port_name, bridge=bridge, if_exists=True).execute(check_error=True)


def port_ofport(db_url: str, port_name: str) -> int | None:
    """Return the OpenFlow port number of an interface, None if absent or failed."""
    row = ovsdb.find_interface(ovsdb.get_api(db_url), port_name)
    if row is None:
        return None
    return ovsdb.ofport_value(row["ofport"])


def bfd_status(db_url: str, port_name: str) -> dict:
    """Return the BFD state of a port: enabled, state, forwarding, remote_state, diagnostic..."""
    row = ovsdb.find_interface(ovsdb.get_api(db_url), port_name)
    if row is None:
        raise LookupError(f"no interface {port_name}")
    status: dict = dict(row["bfd_status"])
    status["enabled"] = row["bfd"].get("enable") == "true"
    status["forwarding"] = status.get("forwarding") == "true"
    if "flap_count" in status:
        status["flap_count"] = int(status["flap_count"])
    return status


def list_ports(db_url: str, bridge: str) -> dict[str, dict]:
    """Return the bridge's ports: name -> {ofport, external_ids, type, options}."""
    api = ovsdb.get_api(db_url)
    with api.ovsdb_connection.lock:
        row = idlutils.row_by_value(api.idl, "Bridge", "name", bridge, None)
        if row is None:
            raise LookupError(f"no bridge {bridge}")
        result = {}
        for port in row.ports:
            for iface in port.interfaces:
                result[iface.name] = {
                    "ofport": ovsdb.ofport_value(iface.ofport),
                    "external_ids": dict(iface.external_ids),
                    "type": iface.type,
                    "options": dict(iface.options),
                }
    return result


# -- helpers ---------------------------------------------------------------------------------


def _ensure_tunnel_port(
    db_url: str,
    bridge: str,
    port_name: str,
    kind: str,
    ofport: int | None,
    options: dict[str, str],
    bfd: bool,
) -> int:
    if kind not in TUNNEL_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(TUNNEL_KINDS)}")
    if not port_name or len(port_name) > IFNAMSIZ:
        raise ValueError(f"port_name: {port_name!r} must have 1-{IFNAMSIZ} characters")
    bfd_map = (
        {"enable": "true", "min_rx": str(BFD_INTERVAL_MS), "min_tx": str(BFD_INTERVAL_MS)}
        if bfd
        else {}
    )
    columns = {"type": kind, "options": options, "bfd": bfd_map}
    if ofport is not None:
        columns["ofport_request"] = [ofport]
    api = ovsdb.get_api(db_url)
    before = ovsdb.find_interface(api, port_name)
    ovsdb.commit(api, ovsdb.EnsurePort(api, bridge, port_name, iface_columns=columns))
    number = ovsdb.wait_ofport(api, port_name)
    if before is None:
        LOG.info(
            "tunnel %s (%s to %s) on %s: ofport %d",
            port_name,
            kind,
            options.get("remote_ip"),
            bridge,
            number,
        )
    return number


def _ifindex(ipr, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise ovsdb.OvsPortError(f"no network device {name}")
    return found[0]


def _wait_ifindex(ipr, name: str, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = ipr.link_lookup(ifname=name)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise ovsdb.OvsPortError(
                f"device {name} did not appear (is ovs-vswitchd in this netns?)"
            )
        time.sleep(0.02)


def _has_address(ipr, index: int, net: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bool:
    family = 2 if net.version == 4 else 10
    for msg in ipr.get_addr(family=family, index=index):
        if (
            msg.get_attr("IFA_ADDRESS") == str(net.ip)
            and msg["prefixlen"] == net.network.prefixlen
        ):
            return True
    return False
