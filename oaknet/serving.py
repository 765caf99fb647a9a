"""Serving a manager's Flask app: waitress (default, threads) or gunicorn (worker processes)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from waitress import wasyncore
from waitress.server import create_server

from oaknet import config as cfgmod
from oaknet.config import ServerConfig
from oaknet.fastlane import inline_check, wsgi_app

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


LOOP_TIMEOUT_S = 0.2  # the server loop's housekeeping runs at least this often


class TaskPool:
    """Runs waitress's tasks on up to ``size`` threads, started on demand.

    The thread that went idle last takes the next task (a stack, where waitress's own pool
    wakes the longest-idle thread): under load a few warm threads, with warm store
    connections and CPU caches, serve the requests, instead of all of them in turn. The
    threads a long-poll holds are simply not idle.

    A task that ``inline`` accepts is run by the server loop itself (``run_inline``): handing
    a request to a thread and its answer back costs two wake-ups and two GIL hand-offs,
    measured at 300-400 us of CPU, three times what a cached table query costs to answer.
    """

    def __init__(self, size: int, inline: Callable[[object], bool] | None = None):
        self.size = size
        self.inline = inline
        self.loop_ident = 0  # the server loop's thread, which may run inline tasks itself
        self._inline: deque = deque()
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
        if (
            self.inline is not None
            and threading.get_ident() == self.loop_ident
            and self.inline(task)
        ):
            # waitress calls this while it holds the connection's request lock: the loop runs
            # the task right after the read that queued it (run_inline).
            self._inline.append(task)
            return
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

    def run_inline(self) -> None:
        """Run the tasks queued for the loop's own thread (a quick answer, no thread hand-off)."""
        while self._inline:
            task = self._inline.popleft()
            try:
                task.service()
            except Exception:
                LOG.exception("server task %r failed", task)

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
        self.wsgi = wsgi_app(app)
        self.server = create_server(
            self.wsgi,
            sockets=[self.sock],
            threads=cfg.threads,
            # Flask answers too-large bodies with a JSON 413; waitress only stops the absurd ones.
            max_request_body_size=max(16 * cfg.max_body, 8 << 20),
            connection_limit=max(100, cfg.threads * 2),
            channel_timeout=120,  # longer than the longest long-poll
            ident="oaknet",
            clear_untrusted_proxy_headers=True,
            # Whole seconds (waitress reads it as an int: 0.2 was 0, a loop that never slept).
            # serve_loop, which runs the server, has its own LOOP_TIMEOUT_S.
            asyncore_loop_timeout=1,
            # Limitation: ``_dispatcher`` is waitress's underscored hook for the task
            # dispatcher (3.0.2 here); a waitress upgrade has to keep it or TaskPool goes.
            _dispatcher=TaskPool(cfg.threads, inline_check(self.wsgi)),
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
            serve_loop(self.server)
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


def serve_loop(server) -> None:
    """waitress's poll loop, without the connections that wait for their request's answer.

    waitress asks every connection per pass whether it wants to read or write, and passes at
    least once per request; one whose request is being served (a long-poll watcher) wants
    neither until its worker answers and wakes the loop. The check below is the negation of
    both answers, read from the same fields (with waitress's default of no request
    lookahead), so nothing is skipped that waitress would have polled. Tasks the pool left
    for this thread (``TaskPool.run_inline``) run right after the read that queued them.

    Limitation: it reads waitress's channel fields (3.0.2 here), like ``_dispatcher`` above.
    """
    connections = server._map
    channel_class = server.channel_class
    timeout_ms = int(LOOP_TIMEOUT_S * 1000)
    lookahead = server.adj.channel_request_lookahead
    read_flags = select.POLLIN | select.POLLPRI
    pool = server.task_dispatcher
    pool.loop_ident = threading.get_ident()
    while connections:
        pollster = select.poll()
        for fd, obj in list(connections.items()):
            if (
                obj.__class__ is channel_class
                and len(obj.requests) > lookahead
                and not (obj.total_outbufs_len or obj.will_close or obj.close_when_flushed)
            ):
                continue  # busy with a request and nothing to send: neither read nor write
            flags = read_flags if obj.readable() else 0
            if obj.writable() and not obj.accepting:
                flags |= select.POLLOUT
            if flags:
                pollster.register(fd, flags)
        try:
            ready = pollster.poll(timeout_ms)
        except InterruptedError:
            continue
        for fd, flags in ready:
            obj = connections.get(fd)
            if obj is not None:
                wasyncore.readwrite(obj, flags)
                pool.run_inline()


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
            return wsgi_app(factory())

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
