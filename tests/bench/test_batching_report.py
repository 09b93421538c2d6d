"""Section 8's arithmetic (bench/batching_report.py) on made-up call logs and records."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.batching import BUCKETS, buckets
from bench.batching_report import RoundData, capacity, histogram, idle_gaps, rows_for, summarize
from bench.report import Row
from bench.stack import SIM_REGISTRY
from shared.models import JobRecord, JobState
from shared.registry import load_registry
from tests.conftest import job_record

BASELINE, PROFILE = "sim-batch1", "sim-a100-sd15-eager"  # t1 0.4 s; g(4) 2.04, g(8) 2.25


def call(pid: int, start: float, end: float, rows: int) -> dict[str, Any]:
    return {"pid": pid, "start": start, "end": end, "wall_start": start, "wall_end": end,
            "rows": rows}  # fmt: skip


def done(created: float, finished: float) -> JobRecord:
    record = job_record(f"t{created}-{finished}")
    record.created_at, record.finished_at, record.state = created, finished, JobState.SUCCEEDED
    return record


def test_capacity_sums_each_workers_rows_after_its_first_call_over_their_time() -> None:
    calls = [call(1, 0, 1, 8), call(1, 1, 2, 8), call(1, 2, 3, 8),  # 16 rows in 2 s
             call(2, 0, 2, 4), call(2, 2, 4, 4)]  # fmt: skip
    assert capacity(calls) == pytest.approx(8 + 2)
    assert capacity([call(3, 0, 1, 8)]) == 0  # one call says nothing of a rate


def test_a_gap_counts_only_while_an_arrived_job_waited_for_a_call() -> None:
    calls = [call(1, 0.0, 1.0, 1), call(1, 1.2, 2.0, 1), call(1, 5.0, 6.0, 1)]
    # Job 2 arrived at 0.5, before the first gap, and was taken at 1.2; job 3 came at 4.9.
    records = [done(0.0, 1.0), done(0.5, 2.0), done(4.9, 6.0)]
    assert idle_gaps(calls, records) == [pytest.approx(0.2)]


def test_histogram_reads_size_x_calls() -> None:
    assert histogram({1: 3, 8: 11}) == "1x3 8x11"


def test_a_round_summary_has_latency_batch_sizes_and_realised_gain() -> None:
    now = time.time()
    records = [done(now, now + 0.5), done(now, now + 1.0)]
    calls = [call(1, now, now + 0.4, 1), call(1, now + 0.5, now + 0.9, 2)]
    summary = summarize(RoundData("saturation", "v", 0.0, records, calls), t1=0.4)
    assert summary["batch_sizes"] == {1: 1, 2: 1}
    assert summary["realised_gain"] == pytest.approx(3 * 0.4 / 0.8)
    assert (summary["p50_s"], summary["p95_s"]) == (pytest.approx(0.75), pytest.approx(1.0))
    assert summary["capacity_jps"] == pytest.approx(2 / 0.5)


def test_a_round_with_a_failed_job_is_refused() -> None:
    record = job_record("bad")
    record.state, record.finished_at = JobState.FAILED, record.created_at
    with pytest.raises(RuntimeError, match="did not succeed"):
        summarize(RoundData("50 %", "v", 1.0, [record], []), t1=0.4)


def backlog(name: str, variant: str, rows: int, seconds: float, calls: int = 5) -> RoundData:
    """A round of ``calls`` back-to-back calls of ``rows`` rows on one worker."""
    now = time.time()
    log = [call(1, now + n * seconds, now + (n + 1) * seconds, rows) for n in range(calls)]
    records = [done(now, c["end"]) for c in log for _ in range(rows)]
    offered = 0.0 if name.startswith("saturation") else 1.0
    return RoundData(name, variant, offered, records, log)


def table(mixed_rows: int, mixed_gain: float) -> list[Row]:
    """The rows for a baseline and PROFILE whose 12-bucket backlog ran calls of this size."""
    loads = ("50 %", "85 %", "110 %")
    base = [backlog("saturation", BASELINE, 1, 0.4), *(backlog(n, BASELINE, 1, 0.4) for n in loads)]
    mine = [backlog("saturation", PROFILE, 8, 8 * 0.4 / 2.25),
            backlog("saturation mixed", PROFILE, mixed_rows, mixed_rows * 0.4 / mixed_gain),
            *(backlog(n, PROFILE, 1, 0.4) for n in (*loads, "85 % mixed"))]  # fmt: skip
    registry = load_registry(SIM_REGISTRY)
    specs = {name: registry.get(name) for name in (BASELINE, PROFILE)}
    return rows_for({BASELINE: base, PROFILE: mine}, specs, BASELINE)[0]


def g3_backlog(rows: list[Row]) -> Row:
    return next(row for row in rows if row.metric.startswith("  G3 backlog"))


def test_g3_on_the_backlog_sets_12_buckets_gain_against_one_buckets() -> None:
    rows = table(mixed_rows=4, mixed_gain=2.04)
    row = g3_backlog(rows)
    assert row.metric.endswith("calls 4x5")  # the 12-bucket backlog's batch sizes
    assert (row.value, row.baseline) == ("gain 2.04x (5.10 jobs/s)", "1 bucket 2.25x")
    assert (row.target, row.verdict) == (">= 0.7 x 1 bucket", "met")
    assert any(r.metric.startswith("  G3 85 %, 12 buckets") for r in rows)  # the G3 stays


def test_g3_on_the_backlog_is_missed_when_12_buckets_run_alone() -> None:
    row = g3_backlog(table(mixed_rows=1, mixed_gain=1.0))
    assert (row.value, row.verdict) == ("gain 1.00x (2.50 jobs/s)", "MISSED")


def test_mixed_rounds_draw_guidance_from_the_12_buckets_the_same_each_run() -> None:
    drawn = buckets(200)
    assert drawn == buckets(200)
    assert set(drawn) == set(BUCKETS) and len(BUCKETS) == 12
