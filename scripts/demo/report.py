"""The demo's output: one progress line per step, and plain-text tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from demo.traffic import Distribution, FirstContact, MoveResult


class Progress:
    """Prints ``[  12.3s] message`` lines, the time counted from the demo's start."""

    def __init__(self, out: TextIO | None = None, quiet: bool = False):
        self.out = out or sys.stdout
        self.quiet = quiet
        self.start = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def step(self, message: str) -> None:
        """One progress line."""
        self.line(f"[{self.elapsed():6.1f}s] {message}")

    def line(self, text: str = "") -> None:
        """Any line of output."""
        if not self.quiet:
            print(text, file=self.out, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Rows under headers in aligned columns (numbers right-aligned)."""
    cells = [[_text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    numeric = [all(_is_number(row[i]) for row in rows) and rows for i in range(len(headers))]

    def fmt(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths))
        ]
        return (indent + "  ".join(parts)).rstrip()

    lines = [fmt(list(headers)), indent + "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in cells]
    return "\n".join(lines)


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "-" if value is None else str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value is None


def first_contacts(contacts: Sequence[FirstContact]) -> str:
    """The first requests to services their clients' nodes had never seen."""
    rows = [
        [c.client, c.service, c.address, "ok" if c.ok else "FAILED", c.ms, c.answer]
        for c in contacts
    ]
    return table(["client", "service", "service IP", "result", "ms", "answer"], rows)


def distributions(dists: Sequence[Distribution]) -> str:
    """One table per service IP: which instance answered how many requests, how fast."""
    groups: dict[tuple, list[Distribution]] = {}
    for d in dists:
        groups.setdefault((d.policy, d.service, d.address, d.proto), []).append(d)
    parts = []
    for (policy, service, address, proto), members in groups.items():
        rows = []
        for d in members:
            for label, count in sorted(d.counts.items()):
                share = f"{100 * d.share(label):.0f}%"
                rows.append([d.client, label, count, share, d.median_ms[label]])
            if d.errors:
                share = f"{100 * d.errors / d.requests:.0f}%"
                rows.append([d.client, "errors", d.errors, share, None])
        headers = ["client", "instance", "answers", "share", "median ms"]
        parts.append(f"\n{policy}: {service} via {address} ({proto})\n{table(headers, rows)}")
    return "\n".join(parts) + "\n"


def move(result: MoveResult) -> str:
    """What the nodes and the clients saw of an instance move (times from its start)."""
    lines = [
        (
            f"  {result.label_before} -> {result.label_after}: the new container (servers "
            f"already listening) was attached {result.attached_ms:.0f} ms after the undeploy call"
        ),
        table(
            ["node", "its table has the move (ms)"],
            [[name, ms] for name, ms in sorted(result.tables_ms.items())],
        ),
    ]
    rows = []
    for client, ms in sorted(result.seen_ms.items()):
        flows = result.udp.get(client, {}).values()
        lost, sent = sum(f.lost for f in flows), sum(f.sent for f in flows)
        requests = result.http_requests[client]
        failed_at = result.http_failed_at_ms.get(client) or [None]
        rows.append(
            [
                client,
                ms,
                f"{result.http_errors[client]}/{requests}",
                failed_at[-1],
                f"{lost}/{sent}",
            ]
        )
    headers = [
        "client",
        "first answer of the moved instance (ms)",
        "HTTP failed",
        "last failure (ms)",
        "UDP lost",
    ]
    lines.append(table(headers, rows))
    for client, flows in sorted(result.udp.items()):
        for index, flow in sorted(flows.items()):
            errors = ", ".join(f"{n} {e}" for e, n in flow.errors.items())
            lines.append(
                f"  {client} UDP flow {index}: {flow.before} before, {flow.last} after "
                f"({flow.lost} of {flow.sent} lost{': ' + errors if errors else ''})"
            )
    converged = result.converged_ms
    when = "never (timed out)" if converged is None else f"{converged:.0f} ms"
    lines.append(f"  every client reached the moved instance after {when}")
    return "\n".join(lines)
