"""The endpoint tables of docs/api.md, generated from the managers' OpenAPI documents."""

# ``python -m demo.apidoc`` rewrites the tables between the ``<!-- endpoints: NAME -->`` and
# ``<!-- end -->`` markers of docs/api.md; ``--check`` only says whether they are current.
# The node API has no OpenAPI document: its table is written by hand and checked against the
# routes of its Flask app.

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from oaknet.config import AuthConfig, ServerConfig, StoreConfig
from oaknet.serving import ServerThread, stop_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
MARKER = re.compile(r"<!-- endpoints: (\w+) -->\n.*?<!-- end -->", re.DOTALL)
ROW = re.compile(r"^\| `(GET|POST|PUT|DELETE)` \| `([^`]+)` \|", re.MULTILINE)


def openapi_documents() -> dict[str, dict]:
    """The OpenAPI documents of a root and a cluster manager (temporary stores, loopback)."""
    from cluster_manager.app import create_app as cluster_app
    from cluster_manager.config import ClusterConfig, RootLinkConfig
    from root_manager.app import create_app as root_app
    from root_manager.config import RootConfig

    auth = AuthConfig(tokens={"doc-token": {"subject": "c1", "roles": ["cluster"]}})
    with tempfile.TemporaryDirectory() as tmp:
        loopback = ServerConfig(host="127.0.0.1", port=0)
        root = root_app(
            RootConfig(
                server=loopback, store=StoreConfig(url=f"sqlite:///{tmp}/root.db"), auth=auth
            )
        )
        # The cluster manager follows its root from the start: give it a real one.
        server = ServerThread(root, loopback).start()
        try:
            cluster = cluster_app(
                ClusterConfig(
                    cluster_id="c1",
                    store=StoreConfig(url=f"sqlite:///{tmp}/cluster.db"),
                    auth=auth,
                    root=RootLinkConfig(url=f"http://127.0.0.1:{server.port}", token="doc-token"),
                )
            )
            try:
                docs = {
                    "root": root.test_client().get("/api/openapi.json").get_json(),
                    "cluster": cluster.test_client().get("/api/openapi.json").get_json(),
                }
            finally:
                cluster.extensions["oaknet_release"]()
                cluster.extensions["oaknet_close"]()
        finally:
            stop_app(root, server)
    return docs


def node_routes() -> set[tuple[str, str]]:
    """(method, path) of every node API route."""
    from sdn.nodeapi import create_app

    app = create_app(None)
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        out |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


def endpoint_table(spec: dict) -> str:
    """A markdown table: method, path, roles, what it does."""
    lines = ["| method | path | roles | what |", "|---|---|---|---|"]
    for path, ops in sorted(spec["paths"].items()):
        for method, op in sorted(ops.items()):
            roles = ", ".join(op.get("x-roles") or []) or "none (public)"
            summary = op["summary"].replace("|", "\\|")
            lines.append(f"| `{method.upper()}` | `{path}` | {roles} | {summary} |")
    return "\n".join(lines)


def rendered(text: str, docs: dict[str, dict]) -> str:
    """``text`` with every generated table replaced by the current one."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in docs:
            return match.group(0)
        return f"<!-- endpoints: {name} -->\n{endpoint_table(docs[name])}\n<!-- end -->"

    return MARKER.sub(replace, text)


def documented_routes(text: str, name: str) -> set[tuple[str, str]]:
    """(method, path) of the rows in the table of section ``name``."""
    match = re.search(rf"<!-- endpoints: {name} -->\n(.*?)<!-- end -->", text, re.DOTALL)
    return set(ROW.findall(match.group(1))) if match else set()


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check, verify) the endpoint tables of docs/api.md."""
    parser = argparse.ArgumentParser(prog="python -m demo.apidoc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = rendered(text, openapi_documents())
    problems = []
    if new != text:
        problems.append("the root/cluster endpoint tables are stale")
    missing = node_routes() ^ documented_routes(text, "node")
    if missing:
        problems.append(f"node API table differs from the routes: {sorted(missing)}")
    if args.check:
        for problem in problems:
            print(f"docs/api.md: {problem} (run: python -m demo.apidoc)", file=sys.stderr)
        return 1 if problems else 0
    if new != text:
        DOC.write_text(new)
        print("docs/api.md: endpoint tables updated")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
