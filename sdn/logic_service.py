"""Flows and groups of one service: its service IPs (groups) and its instance IPs."""

from __future__ import annotations

import functools
import ipaddress
import itertools
import logging
import math
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oaknet.model import CLOSEST, ROUND_ROBIN, Instance, Service
from sdn import pipeline as pl
from sdn.spec import (
    Bucket,
    Controller,
    Ct,
    Flow,
    Group,
    GroupSpec,
    Move,
    Nat,
    Output,
    SetField,
    punt_owner,
    service_owner,
)

if TYPE_CHECKING:
    from sdn.logic import LocalPort, NodeContext, Peer

LOG = logging.getLogger(__name__)

# Buckets per group: a group must fit one OpenFlow message (64 KB; a bucket of an IPv6 DNAT
# takes about 90 bytes). Bucket ids are 32 bits, below OFPG_BUCKET_MAX.
MAX_GROUP_BUCKETS = 512
MAX_BUCKET_ID = 0xFFFFFF00

REJECT_OWNER = punt_owner("reject")

# Actions shared by many flows; the records are immutable, so one instance serves all.
_REQUEST_SNAT = SetField(pl.REG_SNAT, pl.SNAT_REQUESTED)
_MARK_SNAT = (SetField("ct_mark", pl.MARK_SNAT),)
_MARK_INGRESS = (
    Move(pl.REG_INGRESS, "ct_mark", pl.MARK_INGRESS_BITS, 0, pl.MARK_INGRESS_OFS),
    Move(pl.REG_TUN_SRC, "ct_label", 32, 0, pl.LABEL_TUN_SRC_OFS),
)
_TO_TUNNEL = SetField("tunnel_id", pl.VNI)
_PUNT = (Controller(),)


@dataclass(frozen=True)
class Target:
    """Where one instance is reached in one address family from this node.

    ``addr`` is what a new connection is DNATed to (the namespace IP of a local instance, the
    instance IP of a remote one); ``port`` is the ofport that carries it (the container's port
    or the tunnel to its node), watched by fast-failover buckets.
    """

    instance: Instance
    local: bool
    addr: str
    port: int
    cost: float


class GroupIds:
    """Deterministic group ids for service IPs, stable across agent restarts.

    IPv4: the address's low 31 bits (one-to-one inside one half of the IPv4 space, which
    NodeContext enforces for the semantic ranges). IPv6: GROUP_V6_BASE plus (crc32 of the upper
    96 bits + the lower 32 bits) modulo GROUP_V6_SPAN, so addresses allocated one after another
    in one prefix get consecutive ids. Collision rule: an IPv6 address whose id is already held
    by another address takes the next free id (wrapping inside the IPv6 range); the first
    address seen keeps its id, and an address keeps its id for the lifetime of the process.
    """

    def __init__(self) -> None:
        self._v6_ids: dict[str, int] = {}
        self._v6_holders: dict[int, str] = {}

    def group_id(self, addr: str, family: pl.Family) -> int:
        """The group id of service IP ``addr``."""
        if family.version == 4:
            # inet_pton: the same strict parse as ipaddress, a tenth of the time.
            packed = socket.inet_pton(socket.AF_INET, addr)
            return int.from_bytes(packed, "big") & pl.GROUP_V4_MASK
        ip = ipaddress.IPv6Address(addr)
        key = ip.compressed
        known = self._v6_ids.get(key)
        if known is not None:
            return known
        packed = ip.packed
        offset = (zlib.crc32(packed[:12]) + int.from_bytes(packed[12:], "big")) % pl.GROUP_V6_SPAN
        while pl.GROUP_V6_BASE + offset in self._v6_holders:
            holder = self._v6_holders[pl.GROUP_V6_BASE + offset]
            LOG.warning(
                "group id %#x of %s is held by %s; probing the next id",
                pl.GROUP_V6_BASE + offset,
                key,
                holder,
            )
            offset = (offset + 1) % pl.GROUP_V6_SPAN
        gid = pl.GROUP_V6_BASE + offset
        self._v6_ids[key] = gid
        self._v6_holders[gid] = key
        return gid


def service_flows(
    ctx: NodeContext,
    service: Service,
    ports: Mapping[str, LocalPort],
    peers: Mapping[str, Peer],
    costs: Mapping[str, float],
    group_ids: GroupIds,
) -> tuple[list[Flow], list[GroupSpec]]:
    """The flows and groups that translate ``service``'s service IPs and instance IPs."""
    owner = service_owner(service.name)
    flows: list[Flow] = []
    groups: list[GroupSpec] = []
    local_ports = _local_ports(ctx, service, ports)

    for family in pl.FAMILIES:
        if not _has_family(service, family):
            continue  # no service IP or instance IP of the family: nothing to translate
        targets = [
            t
            for t in (
                _target(ctx, inst, family, local_ports, peers, costs) for inst in service.instances
            )
            if t is not None
        ]
        for sip in service.service_ips:
            addr = sip.ipv4 if family.version == 4 else sip.ipv6
            if addr is None:
                continue
            group = _group(sip.policy, group_ids.group_id(addr, family), targets, owner)
            match = {
                "ct_state": pl.ST_NEW,
                pl.REG_ORIGIN: pl.ORIGIN_LOCAL,
                "eth_type": family.eth_type,
                family.dst: addr,
            }
            if group is None:
                flows.append(
                    Flow.make(pl.SERVICE.id, pl.PRIO_SEMANTIC, match, _PUNT, REJECT_OWNER)
                )
                continue
            groups.append(group)
            flows.append(
                Flow.make(
                    pl.SERVICE.id,
                    pl.PRIO_SEMANTIC,
                    match,
                    (_REQUEST_SNAT, Group(group.group_id)),
                    owner,
                )
            )
        reachable = {t.instance.number: t for t in targets}
        for inst in service.instances:
            addr = inst.instance_ip if family.version == 4 else inst.instance_ip_v6
            if addr is not None:
                flows.extend(_instance_ip_flows(family, addr, reachable.get(inst.number), owner))
    return flows, groups


def _has_family(service: Service, family: pl.Family) -> bool:
    if family.version == 4:
        return any(s.ipv4 for s in service.service_ips) or any(
            i.instance_ip for i in service.instances
        )
    return any(s.ipv6 for s in service.service_ips) or any(
        i.instance_ip_v6 for i in service.instances
    )


def _local_ports(
    ctx: NodeContext, service: Service, ports: Mapping[str, LocalPort]
) -> dict[int, LocalPort]:
    # Most services have no instance here; only then is the (small) port list scanned.
    if not any(inst.node_ip == ctx.node_ip for inst in service.instances):
        return {}
    return {p.instance_number: p for p in ports.values() if p.job_name == service.name}


def _target(
    ctx: NodeContext,
    inst: Instance,
    family: pl.Family,
    local_ports: Mapping[int, LocalPort],
    peers: Mapping[str, Peer],
    costs: Mapping[str, float],
) -> Target | None:
    if inst.node_ip is None or inst.status == "stopped":
        return None
    if inst.node_ip == ctx.node_ip:
        port = local_ports.get(inst.number)
        if port is None:
            return None
        addr = port.namespace_ip if family.version == 4 else port.namespace_ip_v6
        return None if addr is None else Target(inst, True, addr, port.ofport, 0.0)
    peer = peers.get(inst.node_ip)
    addr = inst.instance_ip if family.version == 4 else inst.instance_ip_v6
    if peer is None or addr is None:
        return None
    return Target(inst, False, addr, peer.ofport, costs.get(inst.node_ip, math.inf))


@functools.lru_cache(maxsize=4096)
def _dnat(addr: str, mark: tuple, table: int) -> Ct:
    # A round-robin bucket and its instance's flow ask for the same action: one record.
    return Ct(zone=pl.ZONE_DNAT, commit=True, table=table, nat=Nat("dst", addr), exec_=mark)


def _group(policy: str, group_id: int, targets: list[Target], owner: str) -> GroupSpec | None:
    if not targets:
        return None
    if policy == ROUND_ROBIN:
        ordered = sorted(targets, key=lambda t: t.instance.number)
    elif policy == CLOSEST:
        # A local instance (cost 0) first, then remote ones by measured RTT; unmeasured last.
        ordered = sorted(targets, key=lambda t: (t.cost, t.instance.node_ip, t.instance.number))
    else:
        raise ValueError(f"policy: {policy!r} has no group type")
    if len(ordered) > MAX_GROUP_BUCKETS:
        # Limitation: one group is one OpenFlow message (64 KB, about 900 buckets); the
        # instances after the first MAX_GROUP_BUCKETS (in bucket order) get no traffic.
        LOG.warning(
            "%s: %d instances, only the first %d get a bucket of its %s group",
            owner,
            len(ordered),
            MAX_GROUP_BUCKETS,
            policy,
        )
        ordered = ordered[:MAX_GROUP_BUCKETS]
    ids = _bucket_ids([t.instance.number for t in ordered])
    if policy == ROUND_ROBIN:
        buckets = tuple(
            Bucket((_dnat(t.addr, _MARK_SNAT, pl.SNAT.id),), weight=1, bucket_id=b)
            for t, b in zip(ordered, ids)
        )
        return GroupSpec(group_id, "select", buckets, owner, selection_method="dp_hash")
    buckets = tuple(
        Bucket((_dnat(t.addr, _MARK_SNAT, pl.SNAT.id),), watch_port=t.port, bucket_id=b)
        for t, b in zip(ordered, ids)
    )
    return GroupSpec(group_id, "fast_failover", buckets, owner)


def _bucket_ids(numbers: list[int]) -> list[int]:
    """Bucket ids: the instance numbers, except those OpenFlow's 32-bit ids cannot hold,
    which get the lowest ids no instance number of the group uses."""
    taken = {n for n in numbers if n < MAX_BUCKET_ID}
    spare = (i for i in itertools.count() if i not in taken)
    return [n if n < MAX_BUCKET_ID else next(spare) for n in numbers]


def _instance_ip_flows(
    family: pl.Family, addr: str, target: Target | None, owner: str
) -> list[Flow]:
    new_local = {
        "ct_state": pl.ST_NEW,
        pl.REG_ORIGIN: pl.ORIGIN_LOCAL,
        "eth_type": family.eth_type,
        family.dst: addr,
    }
    if target is None:
        return [Flow.make(pl.SERVICE.id, pl.PRIO_SEMANTIC, new_local, _PUNT, REJECT_OWNER)]
    if target.local:
        new_tunnel = {
            "ct_state": pl.ST_NEW,
            pl.REG_ORIGIN: pl.ORIGIN_TUNNEL,
            "eth_type": family.eth_type,
            family.dst: addr,
        }
        return [
            Flow.make(
                pl.SERVICE.id,
                pl.PRIO_SEMANTIC,
                new_local,
                (_REQUEST_SNAT, _dnat(target.addr, _MARK_SNAT, pl.SNAT.id)),
                owner,
            ),
            Flow.make(
                pl.SERVICE.id,
                pl.PRIO_SEMANTIC,
                new_tunnel,
                (_dnat(target.addr, _MARK_INGRESS, pl.ROUTING.id),),
                owner,
            ),
        ]
    commit = Ct(zone=pl.ZONE_DNAT, commit=True, table=pl.SNAT.id, exec_=_MARK_SNAT)
    return [
        Flow.make(pl.SERVICE.id, pl.PRIO_SEMANTIC, new_local, (_REQUEST_SNAT, commit), owner),
        Flow.make(
            pl.ROUTING.id,
            pl.PRIO_ROUTE,
            {"eth_type": family.eth_type, family.dst: addr},
            (_TO_TUNNEL, Output(target.port)),
            owner,
        ),
    ]
