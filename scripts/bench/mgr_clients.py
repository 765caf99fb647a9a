"""The managers benchmark's client processes: keep-alive table queries and long-poll watchers."""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import threading
import time

CLIENT_THREADS = 8  # keep-alive connections per table-query client process


def request(
    conn: http.client.HTTPConnection, method: str, path: str, token: str, body: object = None
) -> tuple[int, bytes]:
    """One request on a keep-alive connection: (status, body bytes)."""
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def query_worker(
    port: int,
    tokens: list[str],
    names: list[str],
    index: int,
    go: mp.synchronize.Event,
    seconds: float,
    results: mp.Queue,
) -> None:
    """A client process: CLIENT_THREADS keep-alive connections; warm up, then query."""
    counts = [0] * CLIENT_THREADS
    errors = [0] * CLIENT_THREADS
    latencies: list[list[float]] = [[] for _ in range(CLIENT_THREADS)]
    start = threading.Barrier(CLIENT_THREADS + 1)
    ready = threading.Barrier(CLIENT_THREADS + 1)

    def loop(t: int) -> None:
        token = tokens[(index * CLIENT_THREADS + t) % len(tokens)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        paths = [f"/api/net/service/{n}/instances" for n in names]
        start.wait()
        for path in paths:
            status, _ = request(conn, "GET", path, token)
            if status != 200:
                errors[t] += 1
        ready.wait()
        go.wait()
        deadline = time.monotonic() + seconds
        i = t
        while True:
            began = time.monotonic()
            if began >= deadline:
                break
            status, _ = request(conn, "GET", paths[i % len(paths)], token)
            latencies[t].append(time.monotonic() - began)
            if status == 200:
                counts[t] += 1
            else:
                errors[t] += 1
            i += CLIENT_THREADS
        conn.close()

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(CLIENT_THREADS)]
    for th in threads:
        th.start()
    start.wait()
    began = time.monotonic()
    ready.wait()
    results.put((CLIENT_THREADS * len(names), time.monotonic() - began))
    go.wait()
    cpu0 = time.process_time()
    for th in threads:
        th.join()
    results.put(
        {
            "count": sum(counts),
            "errors": sum(errors),
            "cpu": time.process_time() - cpu0,
            "latencies": [x for part in latencies for x in part],
        }
    )


def watch_worker(
    port: int, tokens: list[str], since: int, seen: mp.Queue, stop: mp.synchronize.Event
) -> None:
    """A watcher process: one long-polling keep-alive connection per cluster token."""

    def loop(w: int, token: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        revision = since
        while not stop.is_set():
            status, data = request(
                conn, "GET", f"/api/net/watch?since={revision}&timeout=20", token
            )
            at, wall = time.monotonic(), time.time()
            if status != 200:
                raise RuntimeError(f"watch -> {status}: {data[:200]!r}")
            answer = json.loads(data)
            for change in answer["changes"]:
                seen.put((w, at, wall - change["at"]))
            revision = answer["revision"]

    for w, token in enumerate(tokens):
        threading.Thread(target=loop, args=(w, token), daemon=True).start()
    stop.wait()
