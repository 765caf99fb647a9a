"""What the switch should change: the difference between two desired states of an owner."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from sdn.spec import Flow, GroupSpec


@dataclass
class Delta:
    """What to change on the switch: flows to add/delete, groups to add-or-modify/delete."""

    add_flows: list[Flow] = field(default_factory=list)
    del_flows: list[Flow] = field(default_factory=list)
    put_groups: list[GroupSpec] = field(default_factory=list)
    del_groups: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add_flows or self.del_flows or self.put_groups or self.del_groups)

    def summary(self) -> str:
        """A short text for logs."""
        return (
            f"+{len(self.add_flows)}/-{len(self.del_flows)} flows, "
            f"{len(self.put_groups)} groups set, {len(self.del_groups)} deleted"
        )


@dataclass(frozen=True)
class Unit:
    """The desired flows (by cookie) and groups (by id) of one owner key."""

    flows: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)


class SwitchSink(Protocol):
    """The switch side: applies deltas (returns an Event set once applied) and reports state."""

    def submit(self, delta: Delta) -> threading.Event: ...

    def connected(self) -> bool: ...


def diff_units(old: Unit, new: Unit, delta: Delta) -> None:
    """Add to ``delta`` what turns ``old`` into ``new``."""
    delta.del_flows += [f for c, f in old.flows.items() if c not in new.flows]
    delta.add_flows += [f for c, f in new.flows.items() if c not in old.flows]
    delta.put_groups += [g for gid, g in new.groups.items() if old.groups.get(gid) != g]
    delta.del_groups += [gid for gid in old.groups if gid not in new.groups]
