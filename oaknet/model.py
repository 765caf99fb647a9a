"""The service table: services, their service IPs per policy, and their instances.

These records are what the root manager stores, what a cluster manager caches, what the change
feed carries and what a node agent turns into flows, so every process uses exactly these.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field

ROUND_ROBIN = "round-robin"
CLOSEST = "closest"
POLICIES = (ROUND_ROBIN, CLOSEST)

# The reference's IpType strings for each policy, used on its REST bodies.
IP_TYPE_OF_POLICY = {ROUND_ROBIN: "RR", CLOSEST: "Closest"}
POLICY_OF_IP_TYPE = {v: k for k, v in IP_TYPE_OF_POLICY.items()}
# The largest instance number: a path segment of 12 digits is the most the root's API reads back.
MAX_INSTANCE_NUMBER = 10**12 - 1

_NAME_PART = re.compile(r"^[a-zA-Z0-9]{1,30}$")


class ModelError(ValueError):
    """A record or name that does not follow the model; ``field`` names the culprit."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def valid_name_part(text: object) -> bool:
    """True when ``text`` can be one part of a job name (1-30 letters or digits)."""
    return isinstance(text, str) and bool(_NAME_PART.match(text))


def parse_job_name(name: str) -> tuple[str, str, str, str]:
    """Split ``app.appns.service.servicens`` into its four parts, or raise ModelError."""
    if not isinstance(name, str):
        raise ModelError("job_name", "must be a string")
    parts = name.split(".")
    if len(parts) != 4 or not all(_NAME_PART.match(p) for p in parts):
        raise ModelError(
            "job_name", f"{name!r} is not app.appns.service.servicens (1-30 letters/digits each)"
        )
    return parts[0], parts[1], parts[2], parts[3]


def _check_ip(field_name: str, value: str | None, version: int) -> None:
    if value is None:
        return
    try:
        addr = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ModelError(field_name, f"{value!r} is not an IP address") from None
    if addr.version != version:
        raise ModelError(field_name, f"{value} is not an IPv{version} address")


@dataclass(frozen=True)
class ServiceIP:
    """One semantic address of a service: a policy and its IPv4 and/or IPv6 address."""

    policy: str
    ipv4: str | None = None
    ipv6: str | None = None

    def validate(self) -> None:
        """Raise ModelError unless the policy is known and the addresses are of their family."""
        if self.policy not in POLICIES:
            raise ModelError("policy", f"{self.policy!r} is not one of {', '.join(POLICIES)}")
        _check_ip("ipv4", self.ipv4, 4)
        _check_ip("ipv6", self.ipv6, 6)


@dataclass
class Instance:
    """One running replica of a service, and where it runs.

    ``instance_ip``/``instance_ip_v6`` are its stable semantic addresses; ``namespace_ip`` is the
    real address in its node's subnet (never shown to applications); ``node_ip`` is the
    underlay address of the worker node that hosts it, the tunnel endpoint other nodes use.
    """

    number: int
    instance_ip: str | None = None
    instance_ip_v6: str | None = None
    cluster_id: str | None = None
    node_id: str | None = None
    node_ip: str | None = None
    namespace_ip: str | None = None
    namespace_ip_v6: str | None = None
    host_port: int | None = None
    status: str = "scheduled"

    def validate(self) -> None:
        """Raise ModelError when a field has the wrong type or address family."""
        if not isinstance(self.number, int) or isinstance(self.number, bool) or self.number < 0:
            raise ModelError("instance_number", "must be an integer >= 0")
        _check_ip("instance_ip", self.instance_ip, 4)
        _check_ip("instance_ip_v6", self.instance_ip_v6, 6)
        _check_ip("namespace_ip", self.namespace_ip, 4)
        _check_ip("namespace_ip_v6", self.namespace_ip_v6, 6)
        if self.node_ip is not None:
            try:
                ipaddress.ip_address(self.node_ip)
            except ValueError:
                raise ModelError("node_ip", f"{self.node_ip!r} is not an IP address") from None

    @property
    def placed(self) -> bool:
        """True once the instance has a namespace IP on a known node, so traffic can reach it."""
        return self.node_ip is not None and (
            self.namespace_ip is not None or self.namespace_ip_v6 is not None
        )


@dataclass
class Service:
    """A named service (``app.appns.service.servicens``) with its service IPs and instances."""

    name: str
    job_id: str | None = None
    service_ips: list[ServiceIP] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)

    def validate(self) -> None:
        """Raise ModelError unless the name, every service IP and every instance are valid."""
        parse_job_name(self.name)
        seen = set()
        for sip in self.service_ips:
            sip.validate()
            if sip.policy in seen:
                raise ModelError("service_ips", f"policy {sip.policy} given twice")
            seen.add(sip.policy)
        numbers = set()
        for inst in self.instances:
            inst.validate()
            if inst.number in numbers:
                raise ModelError("instances", f"instance number {inst.number} given twice")
            numbers.add(inst.number)

    def service_ip(self, policy: str) -> ServiceIP | None:
        """The service IP of ``policy``, or None when the service has none."""
        return next((s for s in self.service_ips if s.policy == policy), None)

    def instance(self, number: int) -> Instance | None:
        """The instance with ``number``, or None."""
        return next((i for i in self.instances if i.number == number), None)

    def to_dict(self) -> dict:
        """A JSON-ready dict; ``Service.from_dict`` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Service:
        """Build a Service from ``to_dict`` output (unknown keys are an error)."""
        if not isinstance(data, dict):
            raise ModelError("service", "must be an object")
        try:
            return cls(
                name=data["name"],
                job_id=data.get("job_id"),
                service_ips=[ServiceIP(**s) for s in data.get("service_ips", [])],
                instances=[Instance(**i) for i in data.get("instances", [])],
            )
        except KeyError as exc:
            raise ModelError(str(exc.args[0]), "missing") from None
        except TypeError as exc:
            raise ModelError("service", str(exc)) from None
