"""Run the node agent: ``python -m sdn --config FILE``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings

# os-ken picks its hub from this variable at import time; the agent is written for the native
# thread hub (os-ken's default), whatever the environment says.
os.environ["OSKEN_HUB_TYPE"] = "native"
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

LOG = logging.getLogger("sdn")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, start the agent and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m sdn", description=__doc__)
    parser.add_argument("--config", required=True, help="agent config file (YAML or JSON)")
    parser.add_argument("--log-level", help="override the config's log_level")
    parser.add_argument("--log-file", help="append the log to this file instead of stderr")
    args = parser.parse_args(argv)

    from sdn import config

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"oaknet agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        filename=args.log_file,
        level=(args.log_level or cfg.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("os_ken", "OFPHandler", "ovsdbapp", "waitress", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run(cfg)


def run(cfg) -> int:
    """Start every part of the agent for ``cfg`` and block until a stop signal."""
    from sdn.agent import Agent
    from sdn.nodeapi import NodeApiServer, create_app
    from sdn.rtt import RttMeter
    from sdn.switch import Switch
    from sdn.table import TableError, TableFile

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    table_file = TableFile(cfg.service_table) if cfg.service_table else None
    sync = None
    if cfg.cluster_mode:
        from sdn.cluster_start import join_cluster

        joined = join_cluster(cfg, stop)
        if joined is None:
            return 0 if stop.is_set() else 2
        cfg, sync, table = joined
    else:
        try:
            table = table_file.read() if table_file else {}
        except TableError as exc:
            LOG.error("cannot start: %s", exc)
            return 2

    agent = Agent(cfg)
    switch = Switch(agent)
    if sync is not None:
        sync.attach(agent, switch)
    # The desired state must be complete before the switch connects: the first reconcile
    # removes whatever is not desired.
    try:
        agent.start(table, sync.state.learned_peers if sync is not None else ())
    except Exception as exc:  # noqa: BLE001 - any failure here ends the start with a reason
        LOG.error(
            "cannot start: %s: %s (is the node's OVS running at %s?)",
            type(exc).__name__,
            exc,
            cfg.ovs_db,
        )
        return 1
    start_controller(cfg.of_host, cfg.of_port, switch)

    meter = RttMeter(
        cfg.node_ip,
        sorted(agent.peers),
        cfg.rtt_port,
        cfg.rtt_interval_s,
        on_change=agent.set_costs,
        initial=dict(agent.costs),
    )
    agent.on_peers = meter.set_peers
    meter.start()
    if sync is not None:
        sync.start()

    def status() -> dict:
        costs = meter.snapshot()
        peers = [
            {
                "node_ip": ip,
                "ofport": p.ofport,
                "rtt_ms": _ms(costs.get(ip)),
                "bfd": agent.ops.bfd(ip),
            }
            for ip, p in sorted(agent.peers.items())
        ]
        out = {"switch": switch.status(), "peers": peers, "mode": "offline"}
        if table_file is not None:
            out["table"] = {"path": table_file.path, "last_error": table_file.last_error}
        if sync is not None:
            out.update(mode="cluster", cluster=sync.status())
        return out

    api = NodeApiServer(create_app(agent, status), cfg.socket)
    api.start()

    if table_file is not None:
        threading.Thread(
            target=_watch_table,
            args=(table_file, agent, cfg.table_poll_s, stop),
            name="table-watch",
            daemon=True,
        ).start()

    if cfg.container_check_s:
        threading.Thread(
            target=_watch_containers,
            args=(agent, cfg.container_check_s, stop),
            name="container-watch",
            daemon=True,
        ).start()

    stop.wait()
    LOG.info("stopping")
    api.close()
    if sync is not None:
        sync.stop()
    meter.stop()
    switch.stop()
    logging.shutdown()
    # os-ken's native hub threads cannot be joined or killed; the flows stay on the switch.
    os._exit(0)


def start_controller(host: str, port: int, switch) -> None:
    """Start os-ken in this process: the OpenFlow listener and the agent's app."""
    import os_ken.base.app_manager
    import os_ken.controller.controller  # noqa: F401 - registers the ofp-* options
    from os_ken import cfg as os_ken_cfg
    from os_ken.base.app_manager import AppManager

    os_ken_cfg.CONF(
        args=["--ofp-listen-host", host, "--ofp-tcp-listen-port", str(port)],
        project="os_ken",
        default_config_files=[],
    )
    manager = AppManager.get_instance()
    manager.load_apps(["os_ken.controller.ofp_handler", "sdn.switch"])
    contexts = manager.create_contexts()
    manager.instantiate_apps(switch=switch, **contexts)
    LOG.info("OpenFlow controller listening on %s:%d", host, port)


def _ms(value: float | None) -> float | None:
    if value is None or value == float("inf"):
        return None
    return round(value, 3)


def _watch_containers(agent, interval: float, stop: threading.Event) -> None:
    """Detach containers whose veth is gone, every ``interval`` seconds."""
    while not stop.wait(interval):
        try:
            agent.detach_gone()
        except Exception:  # the next round tries again
            LOG.exception("checking the containers' veths failed")


def _watch_table(table_file, agent, interval: float, stop: threading.Event) -> None:
    from sdn.agent import paused_gc
    from sdn.table import TableError

    while not stop.wait(interval):
        try:
            # Decoding a 10k-service JSON or YAML file makes ~500k objects: without the pause
            # they set off full collections over every flow the agent holds (0.2-0.3 s each).
            # A JSON Lines file decodes only its changed lines.
            with paused_gc():
                table = table_file.changed()
        except TableError as exc:
            LOG.error("service table not reloaded: %s", exc)
            continue
        if table is not None:
            agent.set_table(table)


if __name__ == "__main__":
    sys.exit(main())
