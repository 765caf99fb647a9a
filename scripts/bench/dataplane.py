"""Data-plane benchmark: service IP vs direct vs kernel NAT, first contact, convergence."""

from __future__ import annotations

import logging
import math
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import testbed as tb_lib

from bench import dp_measure as measure
from bench import dp_setup as setup

LOG = logging.getLogger(__name__)

GROUP = "dataplane"
KEYS = (
    "tput_ratio_service_vs_direct",
    "rtt_ratio_service_vs_direct",
    "connect_p99_ms_service",
    "connect_p99_ms_direct",
    "tput_ratio_vs_kernel_nat",
    "rtt_ratio_vs_kernel_nat",
    "cps_ratio_service_vs_direct",
    "first_contact_ms",
    "first_contact_known_ms",
    "first_contact_lost",
    "converge_p50_ms",
    "converge_p99_ms",
)


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement one run does."""

    reps: int  # alternating rounds over the paths
    iperf_s: float
    rtt_count: int  # per path and round
    rr_count: int  # per path and round
    cps_s: float
    cps_parallel: int
    first_contacts: int
    changes: int


FULL = Sizes(
    reps=5,
    iperf_s=3,
    rtt_count=200,
    rr_count=200,
    cps_s=2,
    cps_parallel=8,
    first_contacts=5,
    changes=40,
)
SMOKE = Sizes(
    reps=1,
    iperf_s=1,
    rtt_count=30,
    rr_count=30,
    cps_s=0.5,
    cps_parallel=4,
    first_contacts=1,
    changes=4,
)


def run(smoke: bool, say: Callable[[str], None]) -> dict[str, float]:
    """Build the hierarchy, measure every data-plane metric, remove everything again."""
    sizes = SMOKE if smoke else FULL
    prefix = "okb" + secrets.token_hex(3)
    tb = tb_lib.Testbed(prefix)
    h = None
    started = time.monotonic()
    say(f"dataplane: testbed {prefix} (files in {tb.base_dir})")
    try:
        tb.__enter__()
        h = setup.BenchHierarchy(tb)
        bed = setup.build(tb, h, say, sizes.first_contacts)
        return measure_all(bed, sizes, say)
    finally:
        try:
            if h is not None:
                h.close()
                h.stop()
            tb.teardown()
        finally:
            tb_lib.cleanup(prefix)
        say(f"dataplane: testbed removed after {time.monotonic() - started:.0f} s")


def measure_all(bed: setup.Bed, sizes: Sizes, say: Callable[[str], None]) -> dict[str, float]:
    """Every measurement on a built testbed; the metrics."""
    out: dict[str, float] = {}
    say("dataplane: first contact with never-used services (on-demand resolution)")
    firsts = measure.first_contact(bed)
    out["first_contact_ms"] = statistics.median(f["first_ms"] for f in firsts)
    out["first_contact_known_ms"] = statistics.median(f["known_ms"] for f in firsts)
    out["first_contact_lost"] = float(max(f["lost"] for f in firsts))
    out["first_contact_max_ms"] = max(f["first_ms"] for f in firsts)
    queries = measure.resolution_queries(bed)
    out["resolve_cluster_query_ms"] = statistics.median(queries["cluster"])
    out["resolve_root_query_ms"] = statistics.median(queries["root"])

    say(f"dataplane: paths {', '.join(f'{n}={a}' for n, a in bed.paths.items())}")
    bed.tool(bed.client, "tcp-rr", bed.paths.service, setup.TCP_PORT, 1)  # resolves it
    setup.add_peer_paths(bed)
    setup.check_paths(bed)

    say(f"dataplane: iperf3 TCP, {sizes.reps} x {sizes.iperf_s:g} s per path, alternating")
    measured = measure.throughput(bed, sizes.reps, sizes.iperf_s, say)
    tput = measured["bps"]
    for name, values in tput.items():
        out[f"tput_gbps_{name}"] = statistics.median(values) / 1e9
        out[f"ovs_cpu_ms_per_gbit_{name}"] = median_finite(measured["cpu_ms_per_gbit"][name])
        out[f"ovs_passes_per_packet_{name}"] = median_finite(measured["passes"][name])
        out[f"tcp_retransmits_{name}"] = median_finite(measured["retransmits"][name])
    out["tput_ratio_service_vs_direct"] = paired_ratio(tput["service"], tput["direct"])
    out["tput_ratio_vs_kernel_nat"] = paired_ratio(tput["service"], tput["kernel_nat"])
    out["tput_ratio_service_vs_instance_ip"] = paired_ratio(tput["service"], tput["instance_ip"])

    say(f"dataplane: UDP round trips, {sizes.reps} x {sizes.rtt_count} per path")
    rtt = measure.udp_rtt(bed, sizes.reps, sizes.rtt_count)
    for name, values in rtt.items():
        out[f"rtt_ms_{name}"] = median_finite(values["ms"])
        out[f"udp_loss_{name}"] = max(values["lost"])
    out["rtt_ratio_service_vs_direct"] = out["rtt_ms_service"] / out["rtt_ms_direct"]
    out["rtt_ratio_vs_kernel_nat"] = out["rtt_ms_service"] / out["rtt_ms_kernel_nat"]

    say(f"dataplane: TCP connect + request, {sizes.reps} x {sizes.rr_count} per path")
    rr = measure.tcp_rr(bed, sizes.reps, sizes.rr_count)
    for name, values in rr.items():
        out[f"connect_p50_ms_{name}"] = percentile(values, 50)
        out[f"connect_p99_ms_{name}"] = percentile(values, 99)

    say(f"dataplane: new connections/s, {sizes.reps} x {sizes.cps_s:g} s per path")
    rate = measure.cps(bed, sizes.reps, sizes.cps_s, sizes.cps_parallel)
    for name, values in rate.items():
        out[f"cps_{name}"] = statistics.median(values)
    out["cps_ratio_service_vs_direct"] = paired_ratio(rate["service"], rate["direct"])
    out["cps_ratio_vs_kernel_nat"] = paired_ratio(rate["service"], rate["kernel_nat"])
    if not setup.direct_flows_present(bed):
        raise RuntimeError("the untranslated path's flows vanished during the measurements")

    say(
        f"dataplane: {sizes.changes} instance deploys/undeploys at the root until every "
        "interested node's OVS has them"
    )
    changes = measure.converge(bed, sizes.changes, say)
    ms = [c["ms"] for c in changes]
    out["converge_p50_ms"] = percentile(ms, 50)
    out["converge_p99_ms"] = percentile(ms, 99)
    out["converge_max_ms"] = max(ms)
    for kind in ("deploy", "undeploy"):
        out[f"converge_{kind}_p50_ms"] = percentile(
            [c["ms"] for c in changes if c["kind"] == kind], 50
        )
    for node in sorted(changes[0]["nodes_ms"]):
        for kind in ("deploy", "undeploy"):
            out[f"converge_{kind}_p50_ms_{node}"] = percentile(
                [c["nodes_ms"][node] for c in changes if c["kind"] == kind], 50
            )
    deploys = [c for c in changes if c["kind"] == "deploy"]
    # Where a deploy's time goes: the root's answer, the node accepting the attach (it heard
    # of the instance through its cluster), then the OVS of every interested node.
    out["converge_schedule_p50_ms"] = percentile([c["schedule_ms"] for c in deploys], 50)
    out["converge_attach_p50_ms"] = percentile([c["attach_ms"] for c in deploys], 50)
    out["converge_attach_call_p50_ms"] = percentile([c["attach_call_ms"] for c in deploys], 50)
    out["converge_after_attach_p50_ms"] = percentile(
        [c["ms"] - c["attach_ms"] for c in deploys], 50
    )
    out["converge_after_attach_p99_ms"] = percentile(
        [c["ms"] - c["attach_ms"] for c in deploys], 99
    )
    return out


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios a[i] / b[i] (rounds ran side by side)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def median_finite(values: list[float]) -> float:
    """The median of the finite values; NaN when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
