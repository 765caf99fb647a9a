"""``python -m bench [--smoke] [--only GROUP,...] [--out PATH] [--repeat N]``: the harness."""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable

from bench import results
from bench.results import GroupResult

LOG = logging.getLogger(__name__)

GROUPS = ("dataplane", "scale", "managers")  # each is the module scripts/bench/<group>.py
DEFAULT_OUT = "bench/results.json"
_MAIN_PID = os.getpid()


def main(argv: list[str] | None = None) -> int:
    """Run the chosen groups; 0 when every group ran (goals met or not), 1 if one failed."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A SIGTERM must unwind like Ctrl-C so that each group removes what it built.
    signal.signal(signal.SIGTERM, _terminate)
    say = _say
    host = results.machine()
    mode = "smoke (sizes too small for figures)" if args.smoke else "full"
    say(
        f"bench: {mode}, groups {', '.join(args.only)}, repeat {args.repeat}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    done: list[GroupResult] = []
    try:
        for group in args.only:
            done.append(run_group(group, args.smoke, args.repeat, say))
    except KeyboardInterrupt:
        say("bench: interrupted; what was built has been removed")
        return 130
    finally:
        results.write(args.out, args.smoke, done, host, list(os.getloadavg()))
    say("")
    say(results.table(done))
    say(f"\nbench: results in {args.out}")
    return 1 if any(r.error for r in done) else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``--only`` checked against the known groups."""
    parser = argparse.ArgumentParser(prog="scripts/bench.sh", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="small sizes, one repetition: checks, not figures"
    )
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups (default: all of {', '.join(GROUPS)})",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per group; metrics are their medians"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    args = parser.parse_args(argv)
    args.only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in args.only if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; known: {', '.join(GROUPS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def run_group(group: str, smoke: bool, repeat: int, say: Callable[[str], None]) -> GroupResult:
    """Import ``bench.<group>`` and run it ``repeat`` times; a missing module is skipped."""
    res = GroupResult(group)
    try:
        module = importlib.import_module(f"bench.{group}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bench.{group}":
            raise
        res.skipped = f"scripts/bench/{group}.py does not exist yet"
        say(f"bench: {group}: skipped ({res.skipped})")
        return res
    started = time.monotonic()
    for i in range(repeat):
        say(f"bench: {group}" + (f" run {i + 1}/{repeat}" if repeat > 1 else ""))
        try:
            res.runs.append(module.run(smoke, say))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; the other groups still run
            res.error = f"{type(exc).__name__}: {exc}"
            say(f"bench: {group} FAILED: {res.error}")
            LOG.debug("%s", traceback.format_exc())
            traceback.print_exc(file=sys.stderr)
            break
    res.seconds = time.monotonic() - started
    res.metrics = medians(res.runs)
    return res


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per metric, the median over the runs that reported it (first-seen key order)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run if k not in keys]
    out = {}
    for key in keys:
        values = [float(r[key]) for r in runs if key in r]
        finite = [v for v in values if math.isfinite(v)]
        out[key] = statistics.median(finite) if finite else math.nan
    return out


def _say(line: str) -> None:
    print(line, flush=True)


def _terminate(signum: int, frame: object) -> None:
    # Forked helpers (namespace work) inherit this handler: they exit, the harness unwinds.
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt
