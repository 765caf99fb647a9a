"""Address pools: node subnets, service IPs and instance IPs, claimed atomically in the store.

Every allocated address (or subnet) is one document ``addr:<pool>/<address>`` created with
insert-if-absent, so two manager processes on one store can never hand out the same address.
Allocation takes the lowest free address, so a released address is the next one reused.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from oaknet.config import PoolsConfig
from oaknet.store import Reader, Tx

LOG = logging.getLogger(__name__)

SUBNET_V4 = "subnet_v4"
SUBNET_V6 = "subnet_v6"
SERVICE_V4 = "service_v4"
INSTANCE_V6 = "instance_v6"
ROUND_ROBIN_V6 = "round_robin_v6"
CLOSEST_V6 = "closest_v6"
HINT_KIND = "pool_hint"  # key: pool name -> {"next": lowest address that may be free}


class PoolError(ValueError):
    """An address cannot be had; ``field`` names the request field it came from."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class PoolExhausted(PoolError):
    """No free address left in a pool."""


class AddressTaken(PoolError):
    """A requested address is already claimed by someone else."""


class OutOfRange(PoolError):
    """A requested address is not in the pool (or not a valid start of a block)."""


@dataclass(frozen=True)
class Claim:
    """Who holds an address: an opaque owner string such as ``service/<id>/RR``."""

    address: str
    owner: str


class AddressPool:
    """A range handing out single addresses, or aligned blocks when ``block_prefix`` is set."""

    def __init__(self, name: str, network: str, block_prefix: int | None = None):
        self.name = name
        self.network = ipaddress.ip_network(network)
        self.kind = f"addr:{name}"
        self.block_prefix = block_prefix
        if block_prefix is None:
            self.step = 1
            # Skip the range's first address (and for IPv4 its last, the broadcast of a /16),
            # as oakestra-net hands out 10.30.0.1 first.
            self.first = int(self.network.network_address) + 1
            self.last = int(self.network.broadcast_address) - (
                1 if self.network.version == 4 else 0
            )
        else:
            self.step = 2 ** (self.network.max_prefixlen - block_prefix)
            self.first = int(self.network.network_address)
            self.last = int(self.network.broadcast_address) - self.step + 1

    def __repr__(self) -> str:
        return f"AddressPool({self.name}, {self.network})"

    @property
    def size(self) -> int:
        """How many addresses (or blocks) the pool holds."""
        return (self.last - self.first) // self.step + 1

    def allocate(self, tx: Tx, owner: str, field: str | None = None) -> str:
        """Claim the lowest free address for ``owner``; PoolExhausted when none is left.

        A hint kept in the store (every address below it is taken) makes this O(1) in the
        usual case instead of a walk over all claims; releases move the hint back down.
        """
        hint = tx.get(HINT_KIND, self.name)
        candidate = int(hint["next"]) if hint else self.first
        while candidate <= self.last:
            address = str(ipaddress.ip_address(candidate))
            if tx.create(self.kind, address, {"owner": owner}):
                tx.put(HINT_KIND, self.name, {"next": str(candidate + self.step)})
                LOG.debug("pool %s: %s claimed by %s", self.name, address, owner)
                return address
            candidate += self.step  # claimed (by a chosen address or another process)
        LOG.warning("pool %s (%s) exhausted", self.name, self.network)
        raise PoolExhausted(f"no free address left in pool {self.name} ({self.network})", field)

    def claim(self, tx: Tx, address: str, owner: str, field: str | None = None) -> str:
        """Claim a chosen ``address`` for ``owner`` (idempotent for the same owner)."""
        normal = self.check(address, field)
        if not tx.create(self.kind, normal, {"owner": owner}):
            held = tx.get(self.kind, normal)
            if not held or held.get("owner") != owner:
                raise AddressTaken(f"{normal} is already in use", field)
        return normal

    def release(self, tx: Tx, address: str, owner: str | None = None) -> bool:
        """Free ``address``; with ``owner``, only when that owner holds it."""
        normal = str(ipaddress.ip_address(address))
        if owner is not None:
            held = tx.get(self.kind, normal)
            if not held or held.get("owner") != owner:
                return False
        freed = tx.delete(self.kind, normal)
        if freed:
            hint = tx.get(HINT_KIND, self.name)
            if hint and int(ipaddress.ip_address(normal)) < int(hint["next"]):
                tx.put(HINT_KIND, self.name, {"next": str(int(ipaddress.ip_address(normal)))})
            LOG.debug("pool %s: %s released", self.name, normal)
        return freed

    def owner(self, reader: Reader, address: str) -> str | None:
        """Who holds ``address``, or None when it is free."""
        held = reader.get(self.kind, str(ipaddress.ip_address(address)))
        return held.get("owner") if held else None

    def check(self, address: str, field: str | None = None) -> str:
        """The normalised form of ``address``, or OutOfRange unless the pool could hand it out."""
        try:
            addr = ipaddress.ip_address(address)
        except (TypeError, ValueError):
            raise OutOfRange(f"{address!r} is not an IP address", field) from None
        value = int(addr)
        if addr.version != self.network.version or not self.first <= value <= self.last:
            raise OutOfRange(f"{addr} is not in {self.network}", field)
        if (value - self.first) % self.step:
            raise OutOfRange(f"{addr} is not the start of a /{self.block_prefix}", field)
        return str(addr)

    def preview(self, reader: Reader, count: int) -> list[str]:
        """The next ``count`` free addresses, without claiming them."""
        taken = {int(ipaddress.ip_address(k)) for k in reader.keys(self.kind)}
        out: list[str] = []
        candidate = self.first
        while candidate <= self.last and len(out) < count:
            if candidate not in taken:
                out.append(str(ipaddress.ip_address(candidate)))
            candidate += self.step
        return out

    def used(self, reader: Reader) -> int:
        """How many addresses are claimed."""
        return reader.count(self.kind)


@dataclass(frozen=True)
class Pools:
    """The manager's pools, built from config."""

    subnet_v4: AddressPool
    subnet_v6: AddressPool
    service_v4: AddressPool
    instance_v6: AddressPool
    round_robin_v6: AddressPool
    closest_v6: AddressPool

    @classmethod
    def from_config(cls, cfg: PoolsConfig) -> Pools:
        """Pools over the configured ranges."""
        return cls(
            subnet_v4=AddressPool(SUBNET_V4, cfg.subnet_v4, cfg.subnet_v4_prefix),
            subnet_v6=AddressPool(SUBNET_V6, cfg.subnet_v6, cfg.subnet_v6_prefix),
            service_v4=AddressPool(SERVICE_V4, cfg.service_v4),
            instance_v6=AddressPool(INSTANCE_V6, cfg.instance_v6),
            round_robin_v6=AddressPool(ROUND_ROBIN_V6, cfg.round_robin_v6),
            closest_v6=AddressPool(CLOSEST_V6, cfg.closest_v6),
        )

    def all(self) -> list[AddressPool]:
        """Every pool, for metrics."""
        return [
            self.subnet_v4,
            self.subnet_v6,
            self.service_v4,
            self.instance_v6,
            self.round_robin_v6,
            self.closest_v6,
        ]
