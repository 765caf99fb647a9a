"""The agent's hands on its node: bridge, tunnels and container ports, through ``ovs_setup``."""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import tempfile

from ovs_setup import bridge as ovs_bridge
from ovs_setup import container as ovs_container
from ovs_setup import ovsdb
from ovs_setup.netns import NetnsError, open_netns
from sdn.config import AgentConfig
from sdn.local import Container, LocalError
from sdn.logic_portmap import Uplink
from sdn.logic_text import flow_text
from sdn.spec import Flow

# The patch pair between the integration bridge and the underlay bridge (port mappings).
PATCH_ON_INT = "oak-to-phy"
PATCH_ON_PHY = "oak-to-int"

LOG = logging.getLogger(__name__)


def tunnel_port_name(node_ip: str) -> str:
    """The tunnel port name towards a peer: ``vx`` and the peer's IPv4 address in hex."""
    return f"vx{int(ipaddress.IPv4Address(node_ip)):08x}"


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
    os.close(fd)


class NodeOps:
    """OVS and link operations of one node, configured once."""

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.mtu = ovs_container.container_mtu(cfg.underlay_mtu, cfg.tunnel_kind)

    def ensure_bridge(self) -> None:
        """Create or check the integration bridge with this agent as its controller."""
        ovs_bridge.ensure_integration_bridge(
            self.cfg.ovs_db,
            self.cfg.bridge,
            f"tcp:{self.cfg.of_host}:{self.cfg.of_port}",
            self.cfg.datapath_type,
        )

    def ensure_tunnel(self, node_ip: str) -> int:
        """Create or check the tunnel port to a peer (with BFD); return its ofport."""
        return ovs_bridge.ensure_tunnel(
            self.cfg.ovs_db,
            self.cfg.bridge,
            tunnel_port_name(node_ip),
            node_ip,
            kind=self.cfg.tunnel_kind,
        )

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

    def detach(self, port_name: str) -> None:
        """Remove a container's OVS port and veth (nothing if gone)."""
        ovs_container.detach_container(self.cfg.ovs_db, self.cfg.bridge, port_name)
