"""Serving a manager's Flask app: waitress (default, threads) or gunicorn (worker processes)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from collections import deque
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


class TaskPool:
    """Runs waitress's tasks on up to ``size`` threads, started on demand.

    The thread that went idle last takes the next task (a stack, where waitress's own pool
    wakes the longest-idle thread): under load a few warm threads, with warm store
    connections and CPU caches, serve the requests, instead of all of them in turn. The
    threads a long-poll holds are simply not idle.
    """

    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self._tasks: deque = deque()
        self._idle: list[threading.Lock] = []  # the parked threads' wake-up locks, a stack
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._saturated = False

    @property
    def started(self) -> int:
        """How many threads the pool has started so far."""
        return len(self._threads)

    def add_task(self, task) -> None:
        """Queue a task; wake the most recently parked thread or start one."""
        with self._lock:
            if self._stopping:
                task.cancel()
                return
            self._tasks.append(task)
            if self._idle:
                self._idle.pop().release()
            elif len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"http-worker-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            elif not self._saturated:
                self._saturated = True
                LOG.warning("all %d server threads are busy; requests queue", self.size)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5.0) -> bool:
        """Stop the threads once their current task is done; cancel queued tasks."""
        with self._lock:
            self._stopping = True
            pending = list(self._tasks) if cancel_pending else []
            if cancel_pending:
                self._tasks.clear()
            for wake in self._idle:
                wake.release()
            self._idle.clear()
            threads = list(self._threads)
        for task in pending:
            task.cancel()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(t.is_alive() for t in threads)
        if busy:
            LOG.warning("%d server thread(s) still busy at shutdown", busy)
        return not busy

    def _work(self) -> None:
        wake = threading.Lock()
        while True:
            with self._lock:
                if self._tasks:
                    task = self._tasks.popleft()
                elif self._stopping:
                    return
                else:
                    task = None
                    self._saturated = False
                    wake.acquire(blocking=False)
                    self._idle.append(wake)
            if task is None:
                wake.acquire()  # until add_task or shutdown releases it
                continue
            try:
                task.service()
            except Exception:
                LOG.exception("server task %r failed", task)


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
            asyncore_loop_timeout=0.2,  # the loop's housekeeping runs at least this often
            # Limitation: ``_dispatcher`` is waitress's underscored hook for the task
            # dispatcher (3.0.2 here); a waitress upgrade has to keep it or TaskPool goes.
            _dispatcher=TaskPool(cfg.threads),
        )
        self._thread = threading.Thread(target=self._run, name=f"http-{self.port}", daemon=True)

    def start(self) -> ServerThread:
        """Start serving; returns self."""
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the server loop runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.server.run()
        except (OSError, ValueError):
            # Closing the sockets under a running loop ends it this way.
            LOG.debug("server loop on port %d ended", self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close open connections, end the worker threads."""
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
        if self._thread.is_alive():
            # Closing on the loop's own thread empties its socket map, so it returns at once
            # instead of after its select timeout. A loop that ended just now has closed its
            # trigger already (EBADF): then there is nothing left to wake.
            with contextlib.suppress(OSError):
                self.server.trigger.pull_trigger(self._close_all)
            self._thread.join(timeout)
        self._close_all()

    def _close_all(self) -> None:
        for channel in list(self.server._map.values()):
            with contextlib.suppress(OSError):
                channel.close()
        with contextlib.suppress(OSError):
            self.server.close()


def serve(factory: Callable[[], Flask], cfg: ServerConfig, name: str) -> None:
    """Serve the app built by ``factory`` until SIGTERM or SIGINT (waitress, or gunicorn)."""
    if cfg.server == "gunicorn":
        _serve_gunicorn(factory, cfg, name)
        return
    app = factory()
    srv = ServerThread(app, cfg)
    stopping = threading.Event()
    # The signal only sets a flag: the main thread then releases the long-poll watchers before
    # the server waits for its threads, so a stop takes milliseconds, not a watcher's timeout.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    srv.start()
    _write_port(cfg, srv.port)
    LOG.info("%s serving on [%s]:%d (waitress, %d threads)", name, cfg.host, srv.port, cfg.threads)
    while not stopping.wait(1.0):
        if not srv.running:
            LOG.error("%s: the server loop ended unexpectedly", name)
            break
    LOG.info("%s stopping", name)
    stop_app(app, srv)


def stop_app(app: Flask, srv: ServerThread) -> None:
    """Stop a manager app and its server: long-polls released first, the store closed last."""
    app.extensions["oaknet_release"]()
    srv.stop()
    app.extensions["oaknet_close"]()


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
