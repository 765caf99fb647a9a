"""``python -m cluster_manager [--config FILE] [--port N] ...``: run the cluster manager."""

from __future__ import annotations

import sys

from cluster_manager.app import create_app
from cluster_manager.config import ClusterConfig
from oaknet.serving import manager_parser, run_manager


def main(argv: list[str] | None = None) -> int:
    """Load and validate the config, then serve until interrupted."""
    parser = manager_parser("cluster_manager", 10110)
    parser.add_argument("--cluster-id", help="this cluster's id at the root")
    parser.add_argument("--root-url", help="the root manager, e.g. http://[::1]:10099")
    args = parser.parse_args(argv)
    overrides = {"cluster_id": args.cluster_id, "root.url": args.root_url}
    return run_manager("cluster_manager", ClusterConfig, create_app, args, overrides)


if __name__ == "__main__":
    sys.exit(main())
