"""The node agent's configuration: one validated record from a YAML/JSON file, env and flags.

Read with the managers' loader (``oaknet.config.load``): defaults, then the file, then
``OAKNET_<KEY>`` environment variables (``OAKNET_NODE_TOKEN``, ``OAKNET_PEERS=a,b``), then
overrides. Relative paths (``service_table``, ``node_token_file``) are relative to the file.

Two modes. **Offline**: the service table comes from a static file (``service_table``) and
the node subnets from the config. **Cluster** (``cluster_url`` set): the agent registers with
its cluster manager, which hands it its subnets (the same again on every re-registration),
reports every container attach/detach, follows the cluster's watch feed for the services it
is interested in, and resolves unknown service/instance IPs on demand. Example::

    # cluster mode (python -m sdn --config /etc/oaknet/agent.yaml)
    node_ip: 192.0.2.1                    # underlay IPv4: tunnel endpoint, reported host IP
    cluster_url: http://192.0.2.100:10110 # the cluster manager's base URL
    node_token_file: node.jwt             # or node_token: "..." (role "node" at the cluster)
    # node_id: w1                         # default: the JWT's "sub" claim, else node_name
    ovs_db: unix:/run/oaknet/w1/db.sock
    ovs_run_dir: /run/oaknet/w1
    socket: /run/oaknet/w1/agent.sock
    state_dir: /var/lib/oaknet/w1         # also keeps the cluster state (last revision, table)
    negative_cache_s: 5                   # unknown addresses are refused this long unasked
    interest_idle_s: 60                   # on-demand services unused this long are dropped

Cluster-mode keys (``subnet_v4``/``subnet_v6``/``service_table`` must not be set there):
``cluster_url``; ``node_token`` or ``node_token_file`` (re-read on every request, so it may
be rotated); ``node_id`` (optional); ``host_port`` (reported with each instance; default the
tunnel's UDP port); ``cluster_timeout_s`` (5, per request); ``watch_timeout_s`` (30, long
poll); ``cluster_retry_s`` (1, first wait after a failed call, doubling up to 8x);
``negative_cache_s`` (5); ``interest_idle_s`` (60; a service with a local instance never
expires). ``node_name`` defaults to the node id. ``peers`` stay optional: tunnels are made to
every node IP in the table, and back to every node that runs one to this node. Every other key
is shared by both modes (see ``AgentConfig``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from oaknet import config as shared
from oaknet.config import ConfigError

__all__ = ["AgentConfig", "ConfigError", "derive_gateway_mac", "from_dict", "load"]

NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TUNNEL_UDP_PORT = {"vxlan": 4789, "geneve": 6081}
_LISTS = ("peers", "service_ranges_v4", "service_ranges_v6")


@dataclass(frozen=True)
class AgentConfig:
    """Everything one node agent needs to know at start."""

    node_name: str = ""  # logs and health; required offline, the node id in cluster mode
    node_ip: str = ""  # underlay IPv4: tunnel endpoint and RTT responder
    subnet_v4: str | None = None  # container subnet (gateway = first host); offline only
    subnet_v6: str | None = None
    service_ranges_v4: tuple[str, ...] = ("10.30.0.0/16",)
    service_ranges_v6: tuple[str, ...] = ("fdff::/16",)
    bridge: str = "br-int"
    underlay_bridge: str | None = "br-phy"  # holds the node IP; port mappings enter from it
    uplink: str | None = None  # the underlay interface on it (found when not given)
    ovs_db: str = "unix:/run/openvswitch/db.sock"
    ovs_run_dir: str = "/run/openvswitch"  # holds ovs-vswitchd.pid and its control socket
    datapath_type: str = "netdev"
    of_host: str = "127.0.0.1"
    of_port: int = 6653
    gateway_mac: str = ""  # derived from the node subnet when empty
    peers: tuple[str, ...] = ()  # other worker nodes' underlay IPv4 addresses (static)
    tunnel_kind: str = "vxlan"
    underlay_mtu: int = 1500
    service_table: str | None = None  # static table (JSON/YAML) in offline mode
    table_poll_s: float = 1.0  # how often the table file is checked for changes
    socket: str = "/run/oaknet/agent.sock"
    state_dir: str = "/var/lib/oaknet"
    rtt_port: int = 50104
    rtt_interval_s: float = 1.0
    audit_interval_s: float = 60.0  # idle switch re-read and repaired this often; 0: never
    container_check_s: float = 5.0  # containers whose veth is gone are detached; 0: never
    log_level: str = "INFO"
    # -- cluster mode ---------------------------------------------------------------------
    cluster_url: str | None = None  # the cluster manager; set = cluster mode
    node_token: str | None = None  # bearer token with role "node" (JWT or static)
    node_token_file: str | None = None
    node_id: str | None = None  # default: the token's subject, else node_name
    host_port: int | None = None  # reported with each instance; default: the tunnel's port
    cluster_timeout_s: float = 5.0
    watch_timeout_s: float = 30.0
    cluster_retry_s: float = 1.0
    negative_cache_s: float = 5.0
    interest_idle_s: float = 60.0

    def __post_init__(self) -> None:
        # The shared loader hands lists over as they came (YAML list or "a,b" from env).
        for key in _LISTS:
            value = getattr(self, key)
            if isinstance(value, str):
                value = [p.strip() for p in value.split(",") if p.strip()]
            if not isinstance(value, (list, tuple)):
                raise ConfigError(key, "must be a list")
            object.__setattr__(self, key, tuple(str(v) for v in value))

    @property
    def cluster_mode(self) -> bool:
        """True when the agent follows a cluster manager instead of a table file."""
        return bool(self.cluster_url)

    @property
    def gateway_v4(self) -> str:
        """The first host of the IPv4 node subnet: every container's default gateway."""
        return str(next(ipaddress.ip_network(self.subnet_v4).hosts()))

    @property
    def gateway_v6(self) -> str | None:
        """The first host of the IPv6 node subnet, if there is one."""
        if not self.subnet_v6:
            return None
        return str(ipaddress.ip_network(self.subnet_v6).network_address + 1)

    @property
    def reported_host_port(self) -> int:
        """The host port reported with each instance (the tunnel's UDP port by default)."""
        return self.host_port or TUNNEL_UDP_PORT.get(self.tunnel_kind, 4789)

    def read_token(self) -> str:
        """The node's bearer token, from the file when one is configured (rotation)."""
        if self.node_token_file:
            return Path(self.node_token_file).read_text(encoding="utf-8").strip()
        return self.node_token or ""

    def with_subnets(self, subnet_v4: str, subnet_v6: str | None) -> AgentConfig:
        """This config with the node subnets the cluster handed out (gateway MAC derived)."""
        _net("subnet_v4", subnet_v4, 4)
        if subnet_v6:
            _net("subnet_v6", subnet_v6, 6)
        mac = self.gateway_mac or derive_gateway_mac(subnet_v4)
        return dataclasses.replace(
            self, subnet_v4=subnet_v4, subnet_v6=subnet_v6 or None, gateway_mac=mac
        )

    def validate(self) -> None:
        """Raise ConfigError naming the first key the agent cannot run with."""
        _validate(self)


def derive_gateway_mac(subnet_v4: str) -> str:
    """A stable, locally administered unicast MAC for the gateway of ``subnet_v4``."""
    digest = hashlib.sha256(subnet_v4.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, *digest[:5]))


def load(
    path: str, overrides: dict | None = None, env: dict[str, str] | None = None
) -> AgentConfig:
    """Read, complete and validate the config at ``path`` (then ``OAKNET_*`` env, overrides)."""
    base = os.path.dirname(os.path.abspath(path))
    cfg = shared.load(AgentConfig, path, env, overrides)
    return _complete(cfg, base)


def from_dict(data: dict[str, Any]) -> AgentConfig:
    """Build and validate an AgentConfig from a mapping (unknown keys are an error)."""
    cfg = shared.load(AgentConfig, None, {}, data)
    return _complete(cfg, os.getcwd())


def _complete(cfg: AgentConfig, base: str) -> AgentConfig:
    """Absolute file paths, the node id and the gateway MAC filled in."""
    changes: dict[str, Any] = {}
    for key in ("service_table", "node_token_file"):
        value = getattr(cfg, key)
        if value and not os.path.isabs(value):
            changes[key] = os.path.join(base, value)
    cfg = dataclasses.replace(cfg, **changes) if changes else cfg
    if cfg.cluster_mode:
        if cfg.node_token_file and not Path(cfg.node_token_file).is_file():
            raise ConfigError("node_token_file", f"{cfg.node_token_file} is not a readable file")
        node_id = cfg.node_id or _token_subject(cfg.read_token()) or cfg.node_name
        if not node_id or not NODE_ID.match(node_id):
            raise ConfigError(
                "node_id",
                f"{node_id!r} is not 1-64 letters, digits, '.', '_' or '-' (set node_id, or "
                "use a JWT whose subject is the node id)",
            )
        cfg = dataclasses.replace(cfg, node_id=node_id, node_name=cfg.node_name or node_id)
    elif not cfg.gateway_mac:
        cfg = dataclasses.replace(cfg, gateway_mac=derive_gateway_mac(cfg.subnet_v4))
    return cfg


def _token_subject(token: str) -> str | None:
    """The ``sub`` claim of a JWT (unverified: only the cluster can check it), else None."""
    if token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else None


def _net(key: str, value, version: int, min_hosts: int = 4):
    try:
        net = ipaddress.ip_network(value)
    except (ValueError, TypeError):
        raise ConfigError(key, f"{value!r} is not a network in CIDR form") from None
    if net.version != version:
        raise ConfigError(key, f"{value} is not an IPv{version} network")
    if net.num_addresses < min_hosts:
        raise ConfigError(key, f"{value} is too small")
    return net


def _ipv4(key: str, value: str) -> None:
    try:
        if ipaddress.ip_address(value).version != 4:
            raise ValueError
    except ValueError:
        raise ConfigError(key, f"{value!r} is not an IPv4 address") from None


def _validate(cfg: AgentConfig) -> None:
    if not cfg.node_ip:
        raise ConfigError("node_ip", "required")
    _ipv4("node_ip", cfg.node_ip)
    if cfg.cluster_mode:
        _validate_cluster(cfg)
    else:
        for key in ("node_name", "subnet_v4"):
            if not getattr(cfg, key):
                raise ConfigError(key, "required (or set cluster_url for cluster mode)")
        for key in ("node_token", "node_token_file", "node_id"):
            if getattr(cfg, key):
                raise ConfigError(key, "only used in cluster mode (cluster_url)")
    if cfg.subnet_v4:
        _net("subnet_v4", cfg.subnet_v4, 4)
    if cfg.subnet_v6:
        _net("subnet_v6", cfg.subnet_v6, 6)
    for rng in cfg.service_ranges_v4:
        _net("service_ranges_v4", rng, 4, 1)
    for rng in cfg.service_ranges_v6:
        _net("service_ranges_v6", rng, 6, 1)
    for peer in cfg.peers:
        _ipv4("peers", peer)
    if cfg.node_ip in cfg.peers:
        raise ConfigError("peers", f"holds this node's own address {cfg.node_ip}")
    for key in ("of_port", "rtt_port"):
        value = getattr(cfg, key)
        if not 0 < value < 65536:
            raise ConfigError(key, f"{value!r} is not a port number")
    if cfg.gateway_mac:
        _check_mac(cfg.gateway_mac)
    if not 1280 <= cfg.underlay_mtu <= 65535:
        raise ConfigError("underlay_mtu", f"{cfg.underlay_mtu!r} out of range")
    if cfg.tunnel_kind not in TUNNEL_UDP_PORT:
        raise ConfigError("tunnel_kind", f"{cfg.tunnel_kind!r} is not vxlan or geneve")
    if cfg.audit_interval_s != 0 and not 1 <= cfg.audit_interval_s <= 86400:
        raise ConfigError("audit_interval_s", f"{cfg.audit_interval_s} is not 0 or 1..86400")
    if cfg.container_check_s != 0 and not 0.1 <= cfg.container_check_s <= 3600:
        raise ConfigError("container_check_s", f"{cfg.container_check_s} is not 0 or 0.1..3600")
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level", f"{cfg.log_level!r} is not DEBUG, INFO, WARNING or ERROR")


def _validate_cluster(cfg: AgentConfig) -> None:
    if not re.match(r"^https?://[^/]+", cfg.cluster_url):
        raise ConfigError("cluster_url", f"{cfg.cluster_url!r} is not an http(s) URL")
    if not (cfg.node_token or cfg.node_token_file):
        raise ConfigError("node_token", "cluster mode needs node_token or node_token_file")
    for key in ("subnet_v4", "subnet_v6", "service_table"):
        if getattr(cfg, key):
            raise ConfigError(key, "comes from the cluster in cluster mode; remove it")
    if cfg.host_port is not None and not 0 < cfg.host_port < 65536:
        raise ConfigError("host_port", f"{cfg.host_port!r} is not a port number")
    for key, low, high in (
        ("cluster_timeout_s", 0.1, 600),
        ("watch_timeout_s", 0, 110),
        ("cluster_retry_s", 0.01, 600),
        ("negative_cache_s", 0, 3600),
        ("interest_idle_s", 1, 86400 * 7),
    ):
        value = getattr(cfg, key)
        if not low <= value <= high:
            raise ConfigError(key, f"{value} is outside {low}..{high}")


def _check_mac(mac: str) -> None:
    parts = mac.split(":")
    try:
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise ValueError
        first = int(parts[0], 16)
        for p in parts:
            int(p, 16)
    except ValueError:
        raise ConfigError("gateway_mac", f"{mac!r} is not a MAC address") from None
    if first & 1:
        raise ConfigError("gateway_mac", f"{mac} is a multicast address")
