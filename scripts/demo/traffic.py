"""Traffic from client containers: distributions per instance, and probes running in the back."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

import testbed as tb_lib

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")


@dataclass
class Distribution:
    """Which instance answered how many of a client's requests to one service IP, and how fast."""

    policy: str
    service: str
    address: str
    proto: str
    client: str
    counts: dict[str, int] = field(default_factory=dict)  # instance label -> answers
    median_ms: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    requests: int = 0

    def share(self, label: str) -> float:
        """The fraction of requests ``label`` answered."""
        return self.counts.get(label, 0) / self.requests if self.requests else 0.0


@dataclass
class UdpFlow:
    """One connected UDP socket of a probe during a move: who answered, what was lost."""

    before: str | None = None  # the instance that answered before the move started
    after: str | None = None  # the first instance that answered after it started
    last: str | None = None  # the last instance that answered
    sent: int = 0  # datagrams sent after the start
    lost: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error name -> count
    works_at_end: bool = False  # its last datagrams were all answered


@dataclass
class MoveResult:
    """How an instance move looked from the nodes and the clients (times from its start)."""

    label_before: str
    label_after: str
    attached_ms: float = 0.0  # the new node answered the attach
    tables_ms: dict[str, float] = field(default_factory=dict)  # node -> table shows the move
    seen_ms: dict[str, float | None] = field(default_factory=dict)  # client -> first answer
    http_errors: dict[str, int] = field(default_factory=dict)
    http_requests: dict[str, int] = field(default_factory=dict)
    http_failed_at_ms: dict[str, list[float]] = field(default_factory=dict)  # when they failed
    udp: dict[str, dict[int, UdpFlow]] = field(default_factory=dict)  # client -> flows

    @property
    def converged_ms(self) -> float | None:
        """When every client had an answer from the moved instance (None: one never did)."""
        if not self.seen_ms or None in self.seen_ms.values():
            return None
        return max(self.seen_ms.values())

    def add_http(self, client: str, answers: list[dict], start: float) -> None:
        """Record an HTTP probe's answers."""
        after = [a for a in answers if a["t"] >= start]
        seen = [a["t"] for a in after if a.get("name") == self.label_after]
        self.seen_ms[client] = (seen[0] - start) * 1000 if seen else None
        failed = [a for a in after if "error" in a]
        self.http_errors[client] = len(failed)
        self.http_requests[client] = len(after)
        self.http_failed_at_ms[client] = [(a["t"] - start) * 1000 for a in failed]

    def add_udp(self, client: str, answers: list[dict], start: float) -> None:
        """Record a UDP probe's answers, per socket."""
        flows: dict[int, UdpFlow] = {}
        for a in answers:
            flow = flows.setdefault(a["sock"], UdpFlow())
            if a["t"] < start:
                flow.before = a.get("name", flow.before)
                continue
            flow.sent += 1
            if "error" in a:
                flow.lost += 1
                flow.errors[a["error"]] = flow.errors.get(a["error"], 0) + 1
            else:
                flow.after = flow.after or a["name"]
                flow.last = a["name"]
        for index, flow in flows.items():
            tail = [a for a in answers if a["sock"] == index][-5:]
            flow.works_at_end = bool(tail) and all("name" in a for a in tail)
        self.udp[client] = flows


@dataclass
class FirstContact:
    """The first request from a client to a service its node had never seen."""

    client: str
    service: str
    address: str
    ok: bool
    ms: float
    answer: str


def run_probe(
    tb: tb_lib.Testbed, where: tb_lib.Container, *args: object, timeout: float = 120
) -> list[dict]:
    """Run ``probe.py ARGS`` in a container namespace; its answers."""
    proc = tb.run_in(where, [sys.executable, PROBE, *map(str, args)], timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {args} in {where.netns} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)["answers"]


def distribution(
    tb: tb_lib.Testbed,
    where: tb_lib.Container,
    client: str,
    policy: str,
    service: str,
    address: str,
    port: int,
    proto: str,
    count: int,
) -> Distribution:
    """``count`` requests (each a new connection or socket) to ``address``: who answered."""
    answers = run_probe(tb, where, proto, address, port, count, 3 if proto == "http" else 1)
    dist = Distribution(policy, service, address, proto, client, requests=len(answers))
    times: dict[str, list[float]] = {}
    for answer in answers:
        if "name" in answer:
            times.setdefault(answer["name"], []).append(answer["ms"])
        else:
            dist.errors += 1
    dist.counts = dict(Counter({k: len(v) for k, v in times.items()}).most_common())
    dist.median_ms = {k: statistics.median(v) for k, v in times.items()}
    return dist


def first_contact(
    tb: tb_lib.Testbed,
    where: tb_lib.Container,
    client: str,
    service: str,
    address: str,
    port: int,
    proto: str,
) -> FirstContact:
    """One request to a service IP the client's node does not know yet."""
    [answer] = run_probe(tb, where, proto, address, port, 1, 3)
    return FirstContact(
        client,
        service,
        address,
        "name" in answer,
        answer["ms"],
        answer.get("name") or answer.get("error", "?"),
    )


class BackgroundProbe:
    """A probe that runs until stopped: ``watch-http`` or ``watch-udp`` in a container."""

    def __init__(
        self,
        tb: tb_lib.Testbed,
        where: tb_lib.Container,
        client: str,
        kind: str,
        address: str,
        port: int,
        gap: float,
        *extra: str,
    ):
        self.tb = tb
        self.client = client
        self.kind = kind
        self.dir = os.path.join(tb.base_dir, f"probe-{where.name}-{kind}")
        os.makedirs(self.dir)
        argv = [
            sys.executable,
            PROBE,
            f"watch-{kind}",
            address,
            str(port),
            str(gap),
            self.dir,
            *extra,
        ]
        self.proc: subprocess.Popen = tb.run_in(where, argv, background=True, ready_line="ready")

    def answers(self) -> list[dict]:
        """What the probe recorded so far."""
        try:
            with open(os.path.join(self.dir, "answers.jsonl"), encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                break  # a line being written
        return out

    def stop(self, timeout: float = 5) -> list[dict]:
        """Stop probing; every answer it recorded."""
        with open(os.path.join(self.dir, "stop"), "w", encoding="ascii"):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.tb.stop_process(self.proc)
        return self.answers()
