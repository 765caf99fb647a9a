"""The ``oaknet`` command: version, the managers' service table, node status, trace, testbed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
from urllib.parse import urlsplit

from oaknet import __version__
from oaknet.cli_util import OK, USAGE, CliError, render_table, run_tool, seconds
from oaknet.client import Client, ClientError, Unavailable
from oaknet.model import ModelError, Service
from oaknet.oakestra import service_from_job

ROOT_PORT = 10099  # root_manager.config.DEFAULT_PORT (not imported: keeps the CLI light)
CLUSTER_PORT = 10110  # cluster_manager.config.DEFAULT_PORT
DEFAULT_URL = f"http://127.0.0.1:{ROOT_PORT}"


def main(argv: list[str] | None = None) -> int:
    """Run one ``oaknet`` command; return its exit code (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return USAGE
    try:
        return args.func(args)
    except CliError as exc:
        print(f"oaknet: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away; nothing left to say.
        return OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from oaknet import cli_node, cli_testbed, cli_trace

    parser = argparse.ArgumentParser(
        prog="oaknet",
        description="Semantic service addressing for edge clusters: inspect and operate.",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("version", help="versions of oaknet, Python and Open vSwitch")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("services", help="the service table of a root or cluster manager")
    p.add_argument("--url", help=f"manager URL (env OAKNET_URL; default {DEFAULT_URL})")
    p.add_argument("--token", help="bearer token (env OAKNET_TOKEN)")
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_services)

    cli_node.add_parser(sub)
    cli_trace.add_parser(sub)
    cli_testbed.add_parser(sub)
    return parser


# -- version -------------------------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    """Print the versions of oaknet, Python and the installed Open vSwitch."""
    info = {"oaknet": __version__, "python": platform.python_version(), "ovs": ovs_version()}
    if args.json:
        print(json.dumps(info))
        return OK
    print(f"oaknet {info['oaknet']}")
    print(f"Python {info['python']}")
    print(f"Open vSwitch {info['ovs'] or 'not installed'}")
    return OK


def ovs_version() -> str | None:
    """The installed ovs-vswitchd's version (``3.1.0``), or None when it is not installed."""
    if shutil.which("ovs-vswitchd") is None:
        return None
    try:
        text = run_tool(["ovs-vswitchd", "--version"], timeout=5)
    except CliError:
        return None
    match = re.search(r"\(Open vSwitch\)\s+(\S+)", text)
    return match.group(1) if match else text.strip().splitlines()[0]


# -- services ------------------------------------------------------------------------------


def cmd_services(args: argparse.Namespace) -> int:
    """Print the services a manager knows: service IPs per policy and instances."""
    url = (args.url or os.environ.get("OAKNET_URL") or DEFAULT_URL).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--url {url!r} is not an http(s) URL", USAGE)
    token = args.token or os.environ.get("OAKNET_TOKEN")
    if not token:
        raise CliError("no token: give --token or set OAKNET_TOKEN", USAGE)

    kind = manager_kind(url, args.timeout)
    client = Client(
        url, token=token, timeout=args.timeout, connect_timeout=args.timeout, retries=0
    )
    try:
        docs = client.get("/api/net/services")
    except Unavailable as exc:
        raise CliError(f"cannot reach {kind} at {url}: {_reason(exc)}") from None
    except ClientError as exc:
        if exc.status in (401, 403):
            raise CliError(f"token rejected by {kind} at {url}: {exc.detail}") from None
        raise CliError(
            f"{kind} at {url} answered {exc.status} {exc.error}: {exc.detail}"
        ) from None
    finally:
        client.close()
    if not isinstance(docs, list):
        raise CliError(f"{kind} at {url} answered something that is not a service list")
    rows = [_service_row(doc, kind, url) for doc in docs]

    if args.json:
        out = []
        for service, extra in rows:
            out.append({**service.to_dict(), **extra})
        print(json.dumps({"manager": kind, "url": url, "services": out}, indent=2))
        return OK
    if not rows:
        print(f"no services at {kind} {url}")
        return OK
    print(format_services([s for s, _ in rows]))
    return OK


def manager_kind(url: str, timeout: float) -> str:
    """``root manager`` or ``cluster manager``, from the public health endpoint at ``url``."""
    client = Client(url, timeout=timeout, connect_timeout=timeout, retries=0)
    try:
        health = client.get("/api/health")
    except Unavailable as exc:
        raise CliError(f"cannot reach {_guess_kind(url)} at {url}: {_reason(exc)}") from None
    except ClientError as exc:
        raise CliError(
            f"{url} is not an oaknet manager (GET /api/health answered {exc.status})"
        ) from None
    finally:
        client.close()
    if not isinstance(health, dict) or "status" not in health:
        raise CliError(f"{url} is not an oaknet manager (GET /api/health is not its health)")
    return "cluster manager" if "cluster_id" in health else "root manager"


def format_services(services: list[Service]) -> str:
    """Two tables: each service with its service IPs, then every instance and its node."""
    svc_rows = []
    for s in sorted(services, key=lambda s: s.name):
        if not s.service_ips:
            svc_rows.append([s.name, None, None, None, len(s.instances)])
        for i, sip in enumerate(s.service_ips):
            first = i == 0
            svc_rows.append(
                [
                    s.name if first else "",
                    sip.policy,
                    sip.ipv4,
                    sip.ipv6,
                    len(s.instances) if first else "",
                ]
            )
    inst_rows = []
    for s in sorted(services, key=lambda s: s.name):
        for inst in sorted(s.instances, key=lambda i: i.number):
            inst_rows.append(
                [
                    s.name,
                    inst.number,
                    inst.instance_ip,
                    inst.instance_ip_v6,
                    inst.node_id,
                    inst.node_ip,
                    inst.cluster_id,
                    inst.status,
                ]
            )
    out = render_table(
        ["SERVICE", "POLICY", "SERVICE IPv4", "SERVICE IPv6", "INSTANCES"], svc_rows
    )
    if inst_rows:
        out += "\n\n" + render_table(
            [
                "SERVICE",
                "#",
                "INSTANCE IPv4",
                "INSTANCE IPv6",
                "NODE",
                "NODE IP",
                "CLUSTER",
                "STATUS",
            ],
            inst_rows,
        )
    return out


def _service_row(doc: object, kind: str, url: str) -> tuple[Service, dict]:
    try:
        service = service_from_job(doc)  # type: ignore[arg-type]
    except (ModelError, KeyError, TypeError, ValueError) as exc:
        raise CliError(f"{kind} at {url} sent a malformed service: {exc}") from None
    # A cluster manager adds where each service is deployed and which nodes want it.
    extra = {k: doc[k] for k in ("deployed", "interested_nodes") if k in doc}  # type: ignore
    return service, extra


def _guess_kind(url: str) -> str:
    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    return "cluster manager" if port == CLUSTER_PORT else "root manager"


def _reason(exc: Exception) -> str:
    """The short cause inside a requests error text (``Connection refused``, ``timed out``)."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    if "timed out" in text.lower() or "Timeout" in text:
        return "timed out"
    return text.split(": ", 1)[-1][:200]


if __name__ == "__main__":
    sys.exit(main())
