"""The node agent's configuration: one validated record read from a YAML or JSON file."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass, fields, replace

import yaml


class ConfigError(ValueError):
    """A configuration value that the agent cannot run with; the text names the key."""


@dataclass(frozen=True)
class AgentConfig:
    """Everything one node agent needs to know at start."""

    node_name: str
    node_ip: str  # underlay IPv4: tunnel endpoint and RTT responder
    subnet_v4: str  # this node's container subnet; gateway = first host
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
    peers: tuple[str, ...] = ()  # other worker nodes' underlay IPv4 addresses
    tunnel_kind: str = "vxlan"
    underlay_mtu: int = 1500
    service_table: str | None = None  # static table (JSON/YAML) in offline mode
    table_poll_s: float = 1.0  # how often the table file is checked for changes
    socket: str = "/run/oaknet/agent.sock"
    state_dir: str = "/var/lib/oaknet"
    rtt_port: int = 50104
    rtt_interval_s: float = 1.0
    log_level: str = "INFO"

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


def derive_gateway_mac(subnet_v4: str) -> str:
    """A stable, locally administered unicast MAC for the gateway of ``subnet_v4``."""
    digest = hashlib.sha256(subnet_v4.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, *digest[:5]))


def load(path: str, overrides: dict | None = None) -> AgentConfig:
    """Read, complete and validate the config file at ``path`` (keys as in AgentConfig)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: not valid JSON/YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must hold a mapping of keys to values")
    data.update(overrides or {})
    base = os.path.dirname(os.path.abspath(path))
    if data.get("service_table") and not os.path.isabs(data["service_table"]):
        data["service_table"] = os.path.join(base, data["service_table"])
    return from_dict(data)


def from_dict(data: dict) -> AgentConfig:
    """Build and validate an AgentConfig from a mapping (unknown keys are an error)."""
    known = {f.name for f in fields(AgentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    for key in ("node_name", "node_ip", "subnet_v4"):
        if not data.get(key):
            raise ConfigError(f"{key}: required")
    values = dict(data)
    for key in ("peers", "service_ranges_v4", "service_ranges_v6"):
        if key in values:
            if not isinstance(values[key], (list, tuple)):
                raise ConfigError(f"{key}: must be a list")
            values[key] = tuple(str(v) for v in values[key])
    cfg = AgentConfig(**values)
    _validate(cfg)
    if not cfg.gateway_mac:
        cfg = replace(cfg, gateway_mac=derive_gateway_mac(cfg.subnet_v4))
    return cfg


def _net(key: str, value, version: int, min_hosts: int = 4):
    try:
        net = ipaddress.ip_network(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{key}: {value!r} is not a network in CIDR form") from None
    if net.version != version:
        raise ConfigError(f"{key}: {value} is not an IPv{version} network")
    if net.num_addresses < min_hosts:
        raise ConfigError(f"{key}: {value} is too small")
    return net


def _validate(cfg: AgentConfig) -> None:
    try:
        if ipaddress.ip_address(cfg.node_ip).version != 4:
            raise ValueError
    except ValueError:
        raise ConfigError(f"node_ip: {cfg.node_ip!r} is not an IPv4 address") from None
    _net("subnet_v4", cfg.subnet_v4, 4)
    if cfg.subnet_v6:
        _net("subnet_v6", cfg.subnet_v6, 6)
    for rng in cfg.service_ranges_v4:
        _net("service_ranges_v4", rng, 4, 1)
    for rng in cfg.service_ranges_v6:
        _net("service_ranges_v6", rng, 6, 1)
    for peer in cfg.peers:
        try:
            if ipaddress.ip_address(peer).version != 4:
                raise ValueError
        except ValueError:
            raise ConfigError(f"peers: {peer!r} is not an IPv4 address") from None
    if cfg.node_ip in cfg.peers:
        raise ConfigError(f"peers: holds this node's own address {cfg.node_ip}")
    for key in ("of_port", "rtt_port"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or not 0 < value < 65536:
            raise ConfigError(f"{key}: {value!r} is not a port number")
    if cfg.gateway_mac:
        parts = cfg.gateway_mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise ConfigError(f"gateway_mac: {cfg.gateway_mac!r} is not a MAC address")
        try:
            first = int(parts[0], 16)
            [int(p, 16) for p in parts]
        except ValueError:
            raise ConfigError(f"gateway_mac: {cfg.gateway_mac!r} is not a MAC address") from None
        if first & 1:
            raise ConfigError(f"gateway_mac: {cfg.gateway_mac} is a multicast address")
    if not isinstance(cfg.underlay_mtu, int) or not 1280 <= cfg.underlay_mtu <= 65535:
        raise ConfigError(f"underlay_mtu: {cfg.underlay_mtu!r} out of range")
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: {cfg.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
