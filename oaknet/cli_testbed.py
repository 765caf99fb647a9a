"""``oaknet testbed up|down|status``: the namespace testbed (demo) on this machine."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from oaknet.cli_util import OK, USAGE, CliError, render_table

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "scripts" / "demo.sh"
BASE_PREFIX = "oaknet-tb-"  # testbed.cleanup.default_base_dir: <tmp>/oaknet-tb-<prefix>
OWNER_FILE = "owner.pid"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")  # testbed.core.PREFIX_RE


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``oaknet testbed up|down|status``."""
    tb = sub.add_parser("testbed", help="the namespace testbed on this machine")
    tb_sub = tb.add_subparsers(metavar="ACTION")
    p = tb_sub.add_parser("up", help="build and keep the demo testbed (scripts/demo.sh --keep)")
    p.add_argument("--prefix", help="namespace prefix of the demo's testbed")
    p.set_defaults(func=cmd_up)
    p = tb_sub.add_parser("down", help="remove testbeds: their OVS, processes and namespaces")
    p.add_argument(
        "prefixes",
        nargs="*",
        metavar="PREFIX",
        help="testbeds to remove (default: every testbed whose builder is gone)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also remove a testbed whose building process still runs",
    )
    p.set_defaults(func=cmd_down)
    p = tb_sub.add_parser("status", help="testbeds on this machine and what they hold")
    p.set_defaults(func=cmd_status)
    tb.set_defaults(func=lambda args: _usage(tb))


def cmd_up(args: argparse.Namespace) -> int:
    """Run the demo with ``--keep`` so its testbed stays up; its exit code is ours."""
    if not DEMO.is_file():
        raise CliError(f"testbed up is not available: {DEMO} is not part of this installation")
    argv = ["bash", str(DEMO), "--keep"] + (["--prefix", args.prefix] if args.prefix else [])
    return subprocess.run(argv, check=False).returncode


def cmd_down(args: argparse.Namespace) -> int:
    """Remove the named testbeds (or every stale one) by prefix."""
    for prefix in args.prefixes:
        if not PREFIX_RE.match(prefix):
            raise CliError(f"{prefix!r} is not a testbed prefix (like okt1a2b3c)", USAGE)
    lib = _testbed_lib()
    prefixes = list(args.prefixes) or lib.stale_prefixes()
    if not prefixes:
        print("no testbed to remove (none whose builder is gone; name one to remove it)")
        return OK
    _require_root()
    status = OK
    for prefix in prefixes:
        owner = _owner(prefix)
        if owner is not None and _alive(owner) and not args.force:
            print(
                f"oaknet: testbed {prefix} is in use by pid {owner}; not removed "
                "(--force removes it anyway)",
                file=sys.stderr,
            )
            status = 1
            continue
        removed = lib.cleanup(prefix)
        counts = _count_kinds(removed)
        print(f"testbed {prefix}: removed {counts or 'nothing (it was gone)'}")
    return status


def cmd_status(args: argparse.Namespace) -> int:
    """List the testbeds on this machine: builder, namespaces, OVS daemons."""
    names = _named_netns()
    rows = []
    for prefix in _prefixes():
        owner = _owner(prefix)
        state = (
            "-"
            if owner is None
            else (f"running (pid {owner})" if _alive(owner) else f"stale (pid {owner} gone)")
        )
        mine = [n for n in names if n.startswith(prefix + "-")]
        rows.append(
            [
                prefix,
                state,
                len(mine),
                _ovs_count(prefix),
                ", ".join(n[len(prefix) + 1 :] for n in mine) or "-",
            ]
        )
    if not rows:
        print("no testbeds on this machine")
        return OK
    print(render_table(["PREFIX", "BUILDER", "NAMESPACES", "OVS", "NAMES"], rows))
    stale = [r[0] for r in rows if str(r[1]).startswith("stale")]
    if stale:
        print(f"\n`oaknet testbed down` removes the stale ones: {', '.join(stale)}")
    return OK


def _testbed_lib():
    scripts = str(REPO / "scripts")
    if (REPO / "scripts" / "testbed" / "__init__.py").is_file() and scripts not in sys.path:
        sys.path.insert(0, scripts)
    try:
        with warnings.catch_warnings():
            # python-ovs (under the testbed) imports eventlet, which warns on import.
            warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
            import testbed
    except ImportError as exc:
        raise CliError(
            f"the testbed library is not available ({exc}); it is part of the "
            "source tree (scripts/testbed)"
        ) from None
    return testbed


def _prefixes() -> list[str]:
    """Prefixes of the testbeds on this machine (each has its directory in the temp dir)."""
    found = set()
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        prefix = entry[len(BASE_PREFIX) :]
        if entry.startswith(BASE_PREFIX) and PREFIX_RE.match(prefix):
            found.add(prefix)
    return sorted(found)


def _base(prefix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{BASE_PREFIX}{prefix}"


def _owner(prefix: str) -> int | None:
    try:
        return int((_base(prefix) / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _ovs_count(prefix: str) -> int:
    """How many of the testbed's nodes have a running ovs-vswitchd."""
    count = 0
    base = _base(prefix)
    if not base.is_dir():
        return 0
    for run_dir in base.iterdir():
        try:
            pid = int((run_dir / "ovs-vswitchd.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        count += _alive(pid)
    return count


def _named_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


def _count_kinds(removed: list[str]) -> str:
    """``1 OVS, 3 namespaces, 1 directory`` from cleanup's ``kind:name`` list."""
    kinds: dict[str, int] = {}
    for item in removed:
        kind = item.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    words = {
        "ovs": ("OVS", "OVS"),
        "pid": ("process", "processes"),
        "netns": ("namespace", "namespaces"),
        "dir": ("directory", "directories"),
    }
    return ", ".join(f"{n} {words.get(k, (k, k))[n != 1]}" for k, n in kinds.items())


def _require_root() -> None:
    if os.geteuid() != 0:
        raise CliError("removing namespaces needs root")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return USAGE
