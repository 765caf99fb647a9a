"""The benchmark harness: its table, goals and group handling, and a smoke run of the data plane."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from bench import main as bench_main
from bench import results
from bench.dataplane import KEYS as DATAPLANE_KEYS
from bench.dataplane import paired_ratio, percentile
from bench.dp_measure import rotated

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_goals_compare_each_way():
    """A goal is met, missed, or absent (no goal, or no finite value)."""
    assert results.goal_met("tput_ratio_service_vs_direct", 0.97) is True
    assert results.goal_met("tput_ratio_service_vs_direct", 0.90) is False
    assert results.goal_met("converge_p99_ms", 199.0) is True
    assert results.goal_met("converge_p99_ms", 200.0) is False
    assert results.goal_met("tput_gbps_service", 1.0) is None
    assert results.goal_met("converge_p99_ms", math.nan) is None


@pytest.mark.unit
def test_table_shows_value_goal_and_verdict():
    """Each metric is a row with its value, its goal and whether it was met."""
    done = [
        results.GroupResult("dataplane", {"converge_p99_ms": 250.0, "rtt_ms_service": 0.25}),
        results.GroupResult("scale", skipped="scripts/bench/scale.py does not exist yet"),
    ]
    lines = results.table(done).splitlines()
    row = next(line.split() for line in lines if "converge_p99_ms" in line)
    assert row == ["dataplane", "converge_p99_ms", "250", "<", "200", "NO"]
    row = next(line.split() for line in lines if "rtt_ms_service" in line)
    assert row == ["dataplane", "rtt_ms_service", "0.25"]
    assert any("scale" in line and "(skipped)" in line for line in lines)


@pytest.mark.unit
def test_missing_group_module_is_skipped_with_a_note():
    """A group whose module does not exist yet is skipped, not failed."""
    res = bench_main.run_group("nosuchgroup", True, 1, lambda line: None)
    assert res.skipped and "nosuchgroup" in res.skipped
    assert res.error is None and res.metrics == {}


@pytest.mark.unit
def test_repeats_are_reduced_to_medians():
    """With --repeat each metric is the median of the runs; NaN only when none is finite."""
    runs = [{"a": 1.0, "b": math.nan}, {"a": 5.0, "b": math.nan}, {"a": 2.0}]
    out = bench_main.medians(runs)
    assert out["a"] == 2.0 and math.isnan(out["b"])


@pytest.mark.unit
def test_unknown_group_is_refused():
    """--only names only known groups."""
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--only", "dataplane,nosuch"])
    assert bench_main.parse_args(["--only", "scale"]).only == ["scale"]


@pytest.mark.unit
def test_results_file_has_machine_goals_and_null_for_nan(tmp_path):
    """The JSON file records the machine, the goals and each group; NaN becomes null."""
    out = tmp_path / "r.json"
    done = [results.GroupResult("dataplane", {"first_contact_ms": math.nan}, seconds=1.0)]
    results.write(str(out), True, done, results.machine(), [0.1, 0.1, 0.1])
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and doc["machine"]["cpus"] >= 1
    assert doc["goals"]["first_contact_ms"] == {"comparison": "<", "target": 50.0}
    assert doc["groups"]["dataplane"]["metrics"] == {"first_contact_ms": None}


@pytest.mark.unit
def test_statistics_of_the_dataplane_group():
    """Nearest-rank percentiles, medians of per-round ratios, and a fair path order."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0 and math.isnan(percentile([], 50))
    assert paired_ratio([2.0, 9.0, 3.0], [1.0, 10.0, 3.0]) == 1.0
    firsts = [rotated(["a", "b", "c"], turn)[0] for turn in range(3)]
    assert firsts == ["a", "b", "c"]


@pytest.mark.e2e
def test_dataplane_smoke_run_reports_every_metric(tmp_path):
    """``python -m bench --smoke --only dataplane`` reports every data-plane metric as a finite
    number and leaves no namespace behind."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and runs OVS")
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'scripts'}{os.pathsep}{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "dataplane", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads(out.read_text())["groups"]["dataplane"]["metrics"]
    bad = {k: metrics.get(k) for k in DATAPLANE_KEYS if not _finite(metrics.get(k))}
    assert not bad, f"metrics missing or not finite: {bad}"
    assert "converge_p99_ms" in proc.stdout  # the table was printed
    prefix = re.search(r"dataplane: testbed (\w+)", proc.stdout).group(1)
    assert not [n for n in _namespaces() if n.startswith(prefix + "-")]
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), f"oaknet-tb-{prefix}"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _namespaces() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []
