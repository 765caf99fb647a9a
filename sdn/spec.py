"""Switch-neutral records of the flows and groups a node needs.

The pipeline logic (``sdn.logic``) produces these from the service table; the os-ken app turns
them into OpenFlow messages; the unit tests run packets through them in a fake table. Keeping
them plain, hashable values makes "what should the switch hold" comparable with "what does it
hold" and lets an instance change be computed and diffed without touching a switch.

Field names are os-ken's OXM names (``ipv4_dst``, ``ct_state``, ``reg0`` ...). A masked match is
a ``(value, mask)`` tuple. Addresses are strings.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields

# Special output ports (OpenFlow 1.3+ numbering).
IN_PORT = 0xFFFFFFF8
TABLE = 0xFFFFFFF9
CONTROLLER = 0xFFFFFFFD
LOCAL = 0xFFFFFFFE

# ct_state bits, as OVS numbers them.
CT_NEW = 0x01
CT_EST = 0x02
CT_REL = 0x04
CT_RPL = 0x08
CT_INV = 0x10
CT_TRK = 0x20


@dataclass(frozen=True, slots=True)
class Output:
    """Send the packet out of ``port`` (a number or IN_PORT / CONTROLLER / TABLE)."""

    port: int


@dataclass(frozen=True, slots=True)
class SetField:
    """Set an OXM field (``eth_dst``, ``ipv4_src``, ``tun_id``, ``reg0`` ...) to ``value``."""

    field: str
    value: object


@dataclass(frozen=True, slots=True)
class Move:
    """Copy ``n_bits`` from ``src`` (at bit ``src_ofs``) to ``dst`` (at ``dst_ofs``)."""

    src: str
    dst: str
    n_bits: int
    src_ofs: int = 0
    dst_ofs: int = 0


@dataclass(frozen=True, slots=True)
class Nat:
    """The NAT part of a ct action: ``kind`` 'src', 'dst' or None (apply the stored NAT)."""

    kind: str | None = None
    addr: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Ct:
    """Conntrack: look up (and with ``commit`` create) the entry in ``zone``.

    With ``table`` the packet recirculates to that table after conntrack, carrying ct_state;
    ``exec_`` holds SetField actions on ct_mark/ct_label applied at commit.
    """

    zone: int
    commit: bool = False
    table: int | None = None
    nat: Nat | None = None
    exec_: tuple[SetField, ...] = ()


@dataclass(frozen=True, slots=True)
class CtClear:
    """Forget the conntrack state of the packet (before it is tracked again in a new zone)."""


@dataclass(frozen=True, slots=True)
class Group:
    """Hand the packet to group ``group_id``."""

    group_id: int


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Run the packet through ``table`` now and come back (Nicira resubmit)."""

    table: int


@dataclass(frozen=True, slots=True)
class GotoTable:
    """Continue in ``table`` after this flow's actions (an OpenFlow instruction; last)."""

    table: int


@dataclass(frozen=True, slots=True)
class Controller:
    """Send the packet to the agent. The flow's owner says why (see ``punt_owner``)."""

    max_len: int = 0xFFFF


@dataclass(frozen=True, slots=True)
class DecTtl:
    """Decrement the IP TTL / hop limit (drops at zero)."""


Action = (
    Output | SetField | Move | Ct | CtClear | Group | Resubmit | GotoTable | Controller | DecTtl
)


def _plain_repr(cls: type) -> None:
    """Give ``cls`` a __repr__ with the dataclass's exact text, minus its recursion guard.

    A flow's cookie digests the repr of its actions; the guarded repr was about a quarter of
    the pipeline's time for 10k services. Actions never contain themselves.
    """
    names = tuple(f.name for f in fields(cls))
    text = cls.__qualname__ + "(" + ", ".join(f"{n}={{!r}}" for n in names) + ")"

    def __repr__(self) -> str:
        return text.format(*[getattr(self, n) for n in names])

    cls.__repr__ = __repr__


for _cls in (
    Output,
    SetField,
    Move,
    Nat,
    Ct,
    CtClear,
    Group,
    Resubmit,
    GotoTable,
    Controller,
    DecTtl,
):
    _plain_repr(_cls)

# Owners: every flow and group belongs to one owner, a short key naming the thing it serves:
# "node" (static pipeline), "port:<name>" (a local container), "peer:<node ip>" (a tunnel),
# "service:<job name>" (a service's IPs and instances), "punt:<purpose>" (controller flows).
NODE_OWNER = "node"


def service_owner(job_name: str) -> str:
    """The owner key of a service's flows and groups."""
    return f"service:{job_name}"


def punt_owner(purpose: str) -> str:
    """The owner key of a flow that sends packets to the agent for ``purpose``."""
    return f"punt:{purpose}"


def owner_id(owner: str) -> int:
    """A stable 32-bit id of an owner: the high half of the cookies of its flows."""
    return zlib.crc32(owner.encode()) or 1


# Match items that many flows repeat (ct_state, registers, eth_type, ports; not addresses),
# shared between flows: 10k services hold ~200k of them.
_SHARED_ITEMS: dict[tuple, tuple] = {}
_MAX_SHARED_ITEMS = 1 << 16


def _canonical_match(match: dict) -> tuple:
    items = sorted(match.items())
    if len(_SHARED_ITEMS) < _MAX_SHARED_ITEMS:
        items = [i if type(i[1]) is str else _SHARED_ITEMS.setdefault(i, i) for i in items]
    return tuple(items)


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow entry. Build it with ``Flow.make`` so the match is canonical.

    The cookie is ``owner_id(owner) << 32 | crc32(content)``: the high half lets an operator
    (and the agent) select a service's flows with a cookie mask; the low half changes whenever
    the flow changes, so comparing cookies compares contents.
    """

    table: int
    priority: int
    match: tuple
    actions: tuple
    owner: str = NODE_OWNER
    cookie: int = field(default=0, compare=False)

    @classmethod
    def make(cls, table: int, priority: int, match: dict, actions, owner: str = NODE_OWNER):
        """A flow with a canonical (sorted) match and its content cookie."""
        m = _canonical_match(match)
        acts = tuple(actions)
        digest = zlib.crc32(repr((table, priority, m, acts)).encode())
        return cls(table, priority, m, acts, owner, (owner_id(owner) << 32) | digest)

    @property
    def key(self) -> tuple:
        """What identifies the entry in a switch: table, priority and match."""
        return (self.table, self.priority, self.match)

    def match_dict(self) -> dict:
        """The match as a dict of OXM field name to value or (value, mask)."""
        return dict(self.match)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket of a group: its actions, weight and (fast failover) watched port."""

    actions: tuple
    weight: int = 1
    watch_port: int | None = None
    bucket_id: int | None = None


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """One group. ``type`` is 'select', 'all', 'indirect' or 'fast_failover'.

    ``selection_method`` is OVS's select-group method ('dp_hash' or 'hash', with ``fields``);
    None keeps the switch default.
    """

    group_id: int
    type: str
    buckets: tuple
    owner: str = NODE_OWNER
    selection_method: str | None = None
    fields: tuple = ()
