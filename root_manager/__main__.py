"""``python -m root_manager [--config FILE] [--port N] ...``: run the root manager."""

from __future__ import annotations

import sys

from oaknet.serving import manager_parser, run_manager
from root_manager.app import create_app
from root_manager.config import RootConfig


def main(argv: list[str] | None = None) -> int:
    """Load and validate the config, then serve until interrupted."""
    parser = manager_parser("root_manager", 10099)
    parser.add_argument("--server", choices=["waitress", "gunicorn"])
    parser.add_argument("--workers", type=int, help="gunicorn worker processes")
    args = parser.parse_args(argv)
    overrides = {"server.server": args.server, "server.workers": args.workers}
    return run_manager("root_manager", RootConfig, create_app, args, overrides)


if __name__ == "__main__":
    sys.exit(main())
