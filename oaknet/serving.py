"""Serving a manager's Flask app: waitress (default, threads) or gunicorn (worker processes)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from waitress.server import create_server

from oaknet import config as cfgmod
from oaknet.config import ServerConfig

LOG = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; ``::`` also accepts IPv4 (dual-stack), as the reference does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    return sock


class ServerThread:
    """A waitress server on a background thread; ``stop()`` ends it and its connections."""

    def __init__(self, app: Flask, cfg: ServerConfig):
        self.sock = bind(cfg.host, cfg.port)
        self.port = self.sock.getsockname()[1]
        self.server = create_server(
            app,
            sockets=[self.sock],
            threads=cfg.threads,
            # Flask answers too-large bodies with a JSON 413; waitress only stops the absurd ones.
            max_request_body_size=max(16 * cfg.max_body, 8 << 20),
            connection_limit=max(100, cfg.threads * 2),
            channel_timeout=120,  # longer than the longest long-poll
            ident="oaknet",
            clear_untrusted_proxy_headers=True,
            asyncore_loop_timeout=0.2,  # how soon stop() is noticed
        )
        self._thread = threading.Thread(target=self._run, name=f"http-{self.port}", daemon=True)

    def start(self) -> ServerThread:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.server.run()
        except (OSError, ValueError):
            # Closing the sockets under a running loop ends it this way.
            LOG.debug("server loop on port %d ended", self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close open connections, end the worker threads."""
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
        for channel in list(self.server._map.values()):
            with contextlib.suppress(OSError):
                channel.close()
        with contextlib.suppress(OSError):
            self.server.close()
        if self._thread.is_alive():
            self._thread.join(timeout)


def serve(factory: Callable[[], Flask], cfg: ServerConfig, name: str) -> None:
    """Serve the app built by ``factory`` until interrupted (waitress, or gunicorn workers)."""
    if cfg.server == "gunicorn":
        _serve_gunicorn(factory, cfg, name)
        return
    app = factory()
    srv = ServerThread(app, cfg)
    # SIGTERM (systemd, docker stop) ends the server like Ctrl-C: the feed and store close.
    signal.signal(signal.SIGTERM, _interrupt)
    _write_port(cfg, srv.port)
    LOG.info("%s serving on [%s]:%d (waitress, %d threads)", name, cfg.host, srv.port, cfg.threads)
    try:
        srv.server.run()  # returns on KeyboardInterrupt (Ctrl-C, or SIGTERM above)
    finally:
        LOG.info("%s stopping", name)
        close = app.extensions.get("oaknet_close")
        if close:
            close()  # first: releases the long-poll watchers still holding server threads
        srv.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _write_port(cfg: ServerConfig, port: int) -> None:
    if cfg.port_file:
        tmp = Path(cfg.port_file + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(cfg.port_file)


def _serve_gunicorn(factory: Callable[[], Flask], cfg: ServerConfig, name: str) -> None:
    from gunicorn.app.base import BaseApplication

    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host

    class _App(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", [f"{host}:{cfg.port}"])
            self.cfg.set("workers", cfg.workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", cfg.threads)
            self.cfg.set("timeout", 120)
            self.cfg.set("proc_name", name)
            self.cfg.set("limit_request_line", 8190)
            self.cfg.set(
                "when_ready", lambda server: _write_port(cfg, server.LISTENERS[0].getsockname()[1])
            )

        def load(self) -> Flask:
            # Each worker builds its own app after the fork: its own store connections and feed.
            return factory()

    LOG.info("%s serving on %s:%d (gunicorn, %d workers)", name, host, cfg.port, cfg.workers)
    _App().run()


def manager_parser(name: str, default_port: int) -> argparse.ArgumentParser:
    """The command-line flags every manager shares; the caller adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=f"Run the {name}.")
    parser.add_argument("--config", help="YAML or JSON config file")
    parser.add_argument("--host", help="listen address (default ::)")
    parser.add_argument("--port", type=int, help=f"listen port (default {default_port}; 0 = any)")
    parser.add_argument("--port-file", help="write the bound port to this file")
    parser.add_argument("--store", help="store URL: sqlite:///path.db or mongodb://host/db")
    parser.add_argument("--log-level")
    return parser


def run_manager(name: str, config_cls: type, create_app: Callable, args, overrides: dict) -> int:
    """Load and validate a manager's config from file, env and flags, then serve it.

    Returns the process exit code: 2 with a one-line message when the config is unusable.
    """
    common = {
        "server.host": args.host,
        "server.port": args.port,
        "server.port_file": args.port_file,
        "store.url": args.store,
        "log_level": args.log_level,
    }
    try:
        config = cfgmod.load(config_cls, args.config, overrides={**common, **overrides})
    except cfgmod.ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2

    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger(name).info("config: %s", cfgmod.to_dict(config))
    serve(lambda: create_app(config), config.server, name)
    return 0
