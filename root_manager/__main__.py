"""``python -m root_manager [--config FILE] [--port N] ...``: run the root manager."""

from __future__ import annotations

import argparse
import logging
import sys

from oaknet import config as cfgmod
from oaknet.serving import serve
from root_manager.app import create_app
from root_manager.config import RootConfig

LOG = logging.getLogger("root_manager")


def main(argv: list[str] | None = None) -> int:
    """Load and validate the config, then serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m root_manager", description=__doc__)
    parser.add_argument("--config", help="YAML or JSON config file")
    parser.add_argument("--host", help="listen address (default ::)")
    parser.add_argument("--port", type=int, help="listen port (default 10099; 0 = any)")
    parser.add_argument("--port-file", help="write the bound port to this file")
    parser.add_argument("--store", help="store URL: sqlite:///path.db or mongodb://host/db")
    parser.add_argument("--server", choices=["waitress", "gunicorn"])
    parser.add_argument("--workers", type=int, help="gunicorn worker processes")
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    try:
        config = cfgmod.load(
            RootConfig,
            args.config,
            overrides={
                "server.host": args.host,
                "server.port": args.port,
                "server.port_file": args.port_file,
                "server.server": args.server,
                "server.workers": args.workers,
                "store.url": args.store,
                "log_level": args.log_level,
            },
        )
    except cfgmod.ConfigError as exc:
        print(f"root_manager: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    LOG.info("config: %s", cfgmod.to_dict(config))
    serve(lambda: create_app(config), config.server, "root_manager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
