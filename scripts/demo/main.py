"""``python -m demo [--keep]``: run the demo on a fresh testbed and remove it again."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys

import testbed as tb_lib

from demo import topology as topo
from demo.report import Progress
from demo.scenario import Demo, DemoResult

LOG = logging.getLogger(__name__)

DEFAULT_PREFIX = "oakdemo"
_MAIN_PID = os.getpid()
TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovs-ofctl", "ovs-appctl", "ip")


class DemoError(RuntimeError):
    """The demo cannot run here (not root, tools missing, leftovers of a kept run)."""


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when every step worked."""
    parser = argparse.ArgumentParser(prog="scripts/demo.sh", description=__doc__)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the testbed running (remove it with `.venv/bin/oaknet testbed down`)",
    )
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"namespace prefix of this run (default {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--requests", type=int, default=40, help="requests per client and service IP (default 40)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A SIGTERM must unwind like Ctrl-C so that the testbed is removed.
    signal.signal(signal.SIGTERM, _terminate)
    progress = Progress()
    try:
        run_demo(args.prefix, progress, keep=args.keep, requests=args.requests)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted; the testbed was removed", file=sys.stderr)
        return 130
    except Exception as exc:
        LOG.debug("demo failed", exc_info=True)
        print(f"demo: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def run_demo(
    prefix: str, progress: Progress, keep: bool = False, requests: int = 40
) -> DemoResult:
    """Build, measure and (unless ``keep``) remove the testbed; what the demo measured.

    On any failure everything of the run is removed: the testbed's own teardown, then the
    cleanup of whatever still carries the run's prefix.
    """
    check_host()
    if prefix in tb_lib.stale_prefixes() or _namespaces(prefix):
        raise DemoError(
            f"a testbed with prefix {prefix} exists (a kept or crashed run); "
            f"remove it with `.venv/bin/oaknet testbed down {prefix}`"
        )
    tb = tb_lib.Testbed(prefix)
    demo = None
    kept = False
    progress.line(f"oaknet demo: testbed {prefix}, files in {tb.base_dir}")
    try:
        tb.__enter__()
        demo = Demo(tb, progress, requests=requests)
        result = demo.run()
        if keep:
            tb.keep_delays()
            kept = True
            explain_kept(progress, tb, result)
        return result
    finally:
        if demo is not None:
            demo.close()
        if not kept:
            progress.step("removing the testbed")
            try:
                if demo is not None:
                    demo.h.stop()
                tb.teardown()
            finally:
                tb_lib.cleanup(prefix)
            progress.step("done: nothing of the run is left")


def check_host() -> None:
    """Raise DemoError unless this machine can run the demo."""
    if os.geteuid() != 0:
        raise DemoError("needs root (it creates network namespaces and runs OVS)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise DemoError(f"missing tools: {', '.join(missing)} (scripts/install.sh installs them)")


def explain_kept(progress: Progress, tb: tb_lib.Testbed, result: DemoResult) -> None:
    """Tell the user how to reach the kept testbed."""
    base, p = tb.base_dir, tb.prefix
    web = result.service_ips.get(topo.WEB.key, {}).get("RR", "?").split()[0]
    root_url = f"http://{topo.ROOT.ip4}:{topo.ROOT_PORT}"
    lines = [
        "",
        f"The testbed stays up (prefix {p}). Try:",
        (
            f'  ip netns exec {p}-root curl -s -H "Authorization: Bearer '
            f'$(cat {base}/tokens/orchestrator.token)" {root_url}/api/net/services'
        ),
        f"  curl -s --unix-socket {base}/w1-agent/agent.sock http://node/api/v1/health",
        f"  ip netns exec {p}-{topo.container_name(topo.CLIENT, 0, 'w1')} curl -s http://{web}/",
        f"Logs: {base}/*/*.log. Remove everything: .venv/bin/oaknet testbed down {p}",
    ]
    for line in lines:
        progress.line(line)


def _namespaces(prefix: str) -> list[str]:
    try:
        return [n for n in os.listdir("/run/netns") if n.startswith(prefix + "-")]
    except FileNotFoundError:
        return []


def _terminate(signum: int, frame: object) -> None:
    # Forked helpers (namespace work, pyroute2) inherit this handler and are stopped with
    # SIGTERM: they must exit, not unwind the demo's stack and tear the testbed down.
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt
