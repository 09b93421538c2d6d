"""Section 8's arithmetic (bench/batching_report.py) on made-up call logs and records."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.batching_report import RoundData, capacity, histogram, idle_gaps, summarize
from shared.models import JobRecord, JobState
from tests.conftest import job_record


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
