"""``python -m cluster_manager [--config FILE] [--port N] ...``: run the cluster manager."""

from __future__ import annotations

import argparse
import logging
import sys

from cluster_manager.app import create_app
from cluster_manager.config import ClusterConfig
from oaknet import config as cfgmod
from oaknet.serving import serve

LOG = logging.getLogger("cluster_manager")


def main(argv: list[str] | None = None) -> int:
    """Load and validate the config, then serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m cluster_manager", description=__doc__)
    parser.add_argument("--config", help="YAML or JSON config file")
    parser.add_argument("--cluster-id", help="this cluster's id at the root")
    parser.add_argument("--host", help="listen address (default ::)")
    parser.add_argument("--port", type=int, help="listen port (default 10110; 0 = any)")
    parser.add_argument("--port-file", help="write the bound port to this file")
    parser.add_argument("--store", help="store URL: sqlite:///path.db or mongodb://host/db")
    parser.add_argument("--root-url", help="the root manager, e.g. http://[::1]:10099")
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    try:
        config = cfgmod.load(
            ClusterConfig,
            args.config,
            overrides={
                "cluster_id": args.cluster_id,
                "server.host": args.host,
                "server.port": args.port,
                "server.port_file": args.port_file,
                "store.url": args.store,
                "root.url": args.root_url,
                "log_level": args.log_level,
            },
        )
    except cfgmod.ConfigError as exc:
        print(f"cluster_manager: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    LOG.info("config: %s", cfgmod.to_dict(config))
    serve(lambda: create_app(config), config.server, "cluster_manager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
