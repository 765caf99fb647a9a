"""Benchmark results: the machine they ran on, the goals, the table and the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import oaknet

# metric -> (comparison, target). A metric without an entry is reported without a goal.
GOALS: dict[str, tuple[str, float]] = {
    # dataplane
    "tput_ratio_service_vs_direct": (">=", 0.95),
    "rtt_ratio_service_vs_direct": ("<=", 1.10),
    "first_contact_ms": ("<", 50.0),
    "first_contact_lost": ("<=", 0.0),
    "converge_p99_ms": ("<", 200.0),
    # scale
    "program_10k_s": ("<", 3.0),
    "update_cost_ratio_10k_vs_100": ("<=", 2.0),
    "agent_rss_mb_10k": ("<", 200.0),
    # managers
    "table_query_rps": (">=", 2000.0),
    "fanout_100_p99_ms": ("<", 100.0),
}
_COMPARE = {
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
}


@dataclass
class GroupResult:
    """One group's outcome: its metrics (medians over repeats), or why it has none."""

    group: str
    metrics: dict[str, float] = field(default_factory=dict)
    runs: list[dict[str, float]] = field(default_factory=list)  # every repeat's metrics
    seconds: float = 0.0
    error: str | None = None
    skipped: str | None = None


def goal_met(metric: str, value: float) -> bool | None:
    """Whether ``value`` meets the metric's goal; None without a goal or a finite value."""
    goal = GOALS.get(metric)
    if goal is None or not math.isfinite(value):
        return None
    comparison, target = goal
    return _COMPARE[comparison](value, target)


def goal_text(metric: str) -> str:
    """The goal as text (``>= 0.95``), empty without one."""
    goal = GOALS.get(metric)
    return f"{goal[0]} {goal[1]:g}" if goal else ""


def table(results: list[GroupResult]) -> str:
    """The results as a fixed-width text table: group, metric, value, goal, met."""
    rows = [("group", "metric", "value", "goal", "met")]
    for res in results:
        if res.skipped or res.error:
            rows.append((res.group, "(skipped)" if res.skipped else "(failed)", "", "", ""))
            continue
        for metric, value in res.metrics.items():
            met = goal_met(metric, value)
            rows.append(
                (
                    res.group,
                    metric,
                    _number(value),
                    goal_text(metric),
                    "" if met is None else ("yes" if met else "NO"),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: list[GroupResult]) -> str:
    """The same table in Markdown (for docs/benchmarks.md)."""
    lines = ["| group | metric | value | goal | met |", "|---|---|---|---|---|"]
    for res in results:
        for metric, value in res.metrics.items():
            met = goal_met(metric, value)
            mark = "" if met is None else ("yes" if met else "**no**")
            goal = goal_text(metric).replace("<", "&lt;").replace(">", "&gt;")
            lines.append(f"| {res.group} | `{metric}` | {_number(value)} | {goal} | {mark} |")
    return "\n".join(lines)


def machine() -> dict:
    """What the numbers depend on: CPUs, memory, kernel, load average, Python, OVS, time."""
    return {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": _memory_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ovs": _ovs_version(),
        "load_average": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def oaknet_version() -> str:
    """oaknet's version string."""
    return oaknet.__version__


def write(
    path: str, smoke: bool, results: list[GroupResult], host: dict, load_after: list[float]
) -> None:
    """Write the results file (JSON): machine (as at the start), version, mode, each group,
    the goals."""
    doc = {
        "oaknet_version": oaknet_version(),
        "smoke": smoke,
        "machine": host,
        "load_average_after": load_after,
        "goals": {k: {"comparison": c, "target": t} for k, (c, t) in GOALS.items()},
        "groups": {
            r.group: {
                "metrics": {k: _json_number(v) for k, v in r.metrics.items()},
                "runs": [{k: _json_number(v) for k, v in run.items()} for run in r.runs],
                "met": {k: goal_met(k, v) for k, v in r.metrics.items() if k in GOALS},
                "seconds": round(r.seconds, 1),
                "error": r.error,
                "skipped": r.skipped,
            }
            for r in results
        },
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _json_number(value: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return value if math.isfinite(value) else None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _memory_mb() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            kb = int(handle.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return kb // 1024


def _ovs_version() -> str | None:
    try:
        out = subprocess.run(
            ["ovs-vswitchd", "--version"], check=False, capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None
