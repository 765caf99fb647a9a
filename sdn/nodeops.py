"""The agent's hands on its node: bridge, tunnels and container ports, through ``ovs_setup``."""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import tempfile
import time

from ovs_setup import bridge as ovs_bridge
from ovs_setup import container as ovs_container
from ovs_setup import ovsdb
from ovs_setup.netns import NetnsError, open_netns
from ovs_setup.rtnl import Rtnl
from sdn.config import AgentConfig
from sdn.conntrack import Conntrack, ConntrackError
from sdn.local import Container, LocalError
from sdn.logic_portmap import Uplink
from sdn.logic_text import flow_text
from sdn.spec import Flow

# The patch pair between the integration bridge and the underlay bridge (port mappings).
PATCH_ON_INT = "oak-to-phy"
PATCH_ON_PHY = "oak-to-int"
# The ``remote_ip=flow`` tunnel port: receives from nodes that have no tunnel port here.
ANY_PEER_PORT = "vx-any"
SIOCGIFADDR = 0x8915  # ioctl: an interface's IPv4 address
TUNNEL_TYPES = ("vxlan", "geneve")

LOG = logging.getLogger(__name__)


def tunnel_port_name(node_ip: str) -> str:
    """The tunnel port name towards a peer: ``vx`` and the peer's IPv4 address in hex."""
    return f"vx{int(ipaddress.IPv4Address(node_ip)):08x}"


def tunnel_port_name_or_none(node_ip: str) -> str | None:
    """``tunnel_port_name`` of an IPv4 address, None for anything else (``flow``)."""
    try:
        return tunnel_port_name(node_ip)
    except ValueError:
        return None


def _interface_of(ip: str) -> str | None:
    """The name of the interface whose (primary) IPv4 address is ``ip``, if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                res = fcntl.ioctl(
                    sock.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode())
                )
            except OSError:
                continue
            if socket.inet_ntoa(res[20:24]) == ip:
                return name
    return None


def check_netns(netns: str | int) -> None:
    """Raise LocalError unless ``netns`` (path, `ip netns` name or PID) is a network namespace."""
    if isinstance(netns, bool) or not isinstance(netns, (str, int)) or netns in ("", 0):
        raise LocalError(400, "bad_request", "netns", f"{netns!r} is not a path, name or PID")
    if isinstance(netns, int) and netns < 0:
        raise LocalError(400, "bad_request", "pid", f"{netns} is not a PID")
    try:
        fd = open_netns(netns)
    except NetnsError as exc:
        field = "pid" if isinstance(netns, int) else "netns"
        raise LocalError(404, "unknown_netns", field, str(exc)) from None
    try:
        target, own = os.fstat(fd), os.stat("/proc/self/ns/net")
    finally:
        os.close(fd)
    # The node's own namespace would get the container's eth0 and default route.
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        field = "pid" if isinstance(netns, int) else "netns"
        raise LocalError(400, "bad_request", field, f"{netns!r} is the node's own namespace")


class NodeOps:
    """OVS and link operations of one node, configured once."""

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.mtu = ovs_container.container_mtu(cfg.underlay_mtu, cfg.tunnel_kind)
        self._underlay_if: str | None = None  # the interface holding the node IP

    def ensure_bridge(self) -> None:
        """Create or check the integration bridge with this agent as its controller."""
        ovs_bridge.ensure_integration_bridge(
            self.cfg.ovs_db,
            self.cfg.bridge,
            f"tcp:{self.cfg.of_host}:{self.cfg.of_port}",
            self.cfg.datapath_type,
        )

    def ensure_tunnel(self, node_ip: str, ofport: int | None = None) -> int:
        """Create or check the tunnel port to a peer (with BFD, numbered ``ofport`` when it is
        made); return its ofport."""
        return ovs_bridge.ensure_tunnel(
            self.cfg.ovs_db,
            self.cfg.bridge,
            tunnel_port_name(node_ip),
            node_ip,
            kind=self.cfg.tunnel_kind,
            ofport=ofport,
        )

    def ensure_any_peer_tunnel(self) -> int:
        """Create or check the ``remote_ip=flow`` tunnel port; return its ofport."""
        return ovs_bridge.ensure_flow_tunnel(
            self.cfg.ovs_db, self.cfg.bridge, ANY_PEER_PORT, kind=self.cfg.tunnel_kind
        )

    def remove_tunnel(self, node_ip: str) -> None:
        """Remove the tunnel port to a peer (nothing if gone)."""
        ovs_bridge.remove_port(self.cfg.ovs_db, self.cfg.bridge, tunnel_port_name(node_ip))

    def announce(self) -> None:
        """Send a gratuitous ARP for the node IP: every node's OVS on the underlay learns this
        node's MAC from it (OVS learns neighbours only from ARP replies and gratuitous ARPs,
        and a node answering through its any-peer port must know the asker's MAC)."""
        try:
            ifname = self._underlay_if or _interface_of(self.cfg.node_ip)
            if ifname is None:
                LOG.debug("no interface holds %s: no announcement", self.cfg.node_ip)
                return
            self._underlay_if = ifname
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
                sock.bind((ifname, 0))
                mac = sock.getsockname()[4]
                ip = socket.inet_aton(self.cfg.node_ip)
                arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + bytes(6) + ip
                sock.send(b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp)
        except OSError as exc:
            LOG.debug("announcement of %s failed: %s", self.cfg.node_ip, exc)

    def warm_neighbors(self, node_ips: list[str], timeout: float = 1.0) -> list[str]:
        """Have ovs-vswitchd learn the underlay MAC of new tunnel peers before traffic needs
        it (a packet into a tunnel whose peer MAC is unknown is dropped while OVS asks for
        it); the peers still unknown after ``timeout``.

        A datagram from the node IP makes the kernel ask for the peer's MAC; OVS learns it
        from the answer crossing the underlay bridge.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.cfg.node_ip, 0))
            for ip in node_ips:
                try:
                    sock.sendto(b"\0", (ip, self.cfg.rtt_port))
                except OSError as exc:
                    LOG.debug("neighbour probe to %s: %s", ip, exc)
        deadline = time.monotonic() + timeout
        missing = list(node_ips)
        while missing:
            try:
                known = set(Conntrack(self.cfg.ovs_run_dir).appctl("tnl/neigh/show").split())
            except ConntrackError as exc:
                LOG.debug("tnl/neigh/show: %s", exc)
                return missing
            missing = [ip for ip in missing if ip not in known]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return missing

    def tunnel_ofports(self) -> dict[str, int]:
        """The peers that have a tunnel port on the bridge, with its ofport."""
        out = {}
        for name, port in self.list_ports().items():
            remote = port.get("options", {}).get("remote_ip", "")
            ours = port["type"] in TUNNEL_TYPES and name == tunnel_port_name_or_none(remote)
            if ours and port.get("ofport"):
                out[remote] = port["ofport"]
        return out

    def tunnel_peers(self) -> list[str]:
        """The peers that have a tunnel port on the bridge (made by an earlier run or now)."""
        return sorted(self.tunnel_ofports())

    def bfd(self, node_ip: str) -> dict:
        """The BFD state of the tunnel to a peer."""
        try:
            return ovs_bridge.bfd_status(self.cfg.ovs_db, tunnel_port_name(node_ip))
        except LookupError:
            return {}

    def list_ports(self) -> dict[str, dict]:
        """The bridge's ports with ofport and external_ids."""
        return ovs_bridge.list_ports(self.cfg.ovs_db, self.cfg.bridge)

    def attach(self, netns: str | int, c: Container) -> int:
        """Create the container's veth and OVS port; return its ofport (LocalError on failure)."""
        check_netns(netns)
        prefix4 = ipaddress.ip_network(self.cfg.subnet_v4).prefixlen
        v4 = f"{c.namespace_ip}/{prefix4}" if c.namespace_ip else None
        v6 = None
        if c.namespace_ip_v6 and self.cfg.subnet_v6:
            v6 = f"{c.namespace_ip_v6}/{ipaddress.ip_network(self.cfg.subnet_v6).prefixlen}"
        try:
            port = ovs_container.attach_container(
                self.cfg.ovs_db,
                self.cfg.bridge,
                netns,
                c.port_name,
                v4,
                v6,
                self.cfg.gateway_v4 if v4 else None,
                self.cfg.gateway_v6 if v6 else None,
                self.mtu,
                external_ids=c.external_ids(),
                mac=c.mac,
            )
        except ovs_container.AttachError as exc:
            if isinstance(exc.__cause__, NetnsError):
                raise LocalError(404, "unknown_netns", "netns", str(exc)) from None
            if str(exc).startswith("ifname:"):  # the namespace has an eth0 of its own
                raise LocalError(409, "ifname_exists", "netns", str(exc)) from None
            raise LocalError(500, "attach_failed", "netns", str(exc)) from None
        return port.ofport

    def ensure_uplink(self) -> Uplink | None:
        """The patch pair to the underlay bridge (made if missing) and its underlay port;
        None without an underlay bridge."""
        phy = self.cfg.underlay_bridge
        if not phy:
            return None
        try:
            ports = ovs_bridge.list_ports(self.cfg.ovs_db, phy)
        except LookupError:
            LOG.warning("no underlay bridge %s: port mappings are off", phy)
            return None
        nic = self.cfg.uplink or next(
            (name for name, p in ports.items() if p["type"] in ("", "system") and name != phy),
            None,
        )
        if nic is None or nic not in ports:
            LOG.warning("underlay bridge %s has no uplink port: port mappings are off", phy)
            return None
        api = ovsdb.get_api(self.cfg.ovs_db)
        for bridge, name, peer in (
            (self.cfg.bridge, PATCH_ON_INT, PATCH_ON_PHY),
            (phy, PATCH_ON_PHY, PATCH_ON_INT),
        ):
            ovsdb.commit(
                api,
                ovsdb.EnsurePort(
                    api, bridge, name, iface_columns={"type": "patch", "options": {"peer": peer}}
                ),
            )
        return Uplink(
            ovsdb.wait_ofport(api, PATCH_ON_INT),
            ovsdb.wait_ofport(api, PATCH_ON_PHY),
            ports[nic]["ofport"],
        )

    def replace_phy_flows(self, flows: list[Flow]) -> None:
        """Make the underlay bridge's flow table exactly ``flows`` (one atomic bundle).

        That bridge has no controller; ovs-ofctl on its management socket computes the
        difference and applies it, so unchanged flows (and their traffic) stay untouched.
        """
        target = f"unix:{os.path.join(self.cfg.ovs_run_dir, self.cfg.underlay_bridge)}.mgmt"
        with tempfile.NamedTemporaryFile("w", prefix="phy-flows-", suffix=".txt") as handle:
            handle.write("".join(flow_text(f) + "\n" for f in flows))
            handle.flush()
            res = subprocess.run(
                [
                    "ovs-ofctl",
                    "-O",
                    "OpenFlow15",
                    "--bundle",
                    "replace-flows",
                    target,
                    handle.name,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        if res.returncode != 0:
            raise RuntimeError(f"replace-flows on {target}: {res.stderr.strip()}")

    def missing_veths(self, port_names: list[str]) -> list[str]:
        """The names among ``port_names`` that no longer exist as devices on this node."""
        with Rtnl.open() as rtnl:
            return [name for name in port_names if rtnl.link(name) is None]

    def detach(self, port_name: str) -> None:
        """Remove a container's OVS port and veth (nothing if gone)."""
        ovs_container.detach_container(self.cfg.ovs_db, self.cfg.bridge, port_name)
