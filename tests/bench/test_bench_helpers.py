"""The arithmetic the CPU benchmarks report: percentiles and the idle-while-queued gap."""

from __future__ import annotations

from bench.report import percentile
from bench.scaling import idle_while_queued
from shared.models import JobRecord
from tests.conftest import job_record


def test_p99_of_100_values_is_the_99th_smallest() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([7.0], 99) == 7.0


def timed(name: str, worker: str, created: float, started: float, finished: float) -> JobRecord:
    record = job_record(name)
    record.worker, record.created_at = worker, created
    record.started_at, record.finished_at = started, finished
    return record


def test_a_gap_counts_only_while_some_job_waited_through_it() -> None:
    records = [
        timed("a1", "A", 0.0, 0.0, 1.0),
        timed("a2", "A", 0.0, 1.3, 2.0),  # A idled 0.3 s while b2 waited from 0.0 to 1.5
        timed("b1", "B", 0.0, 0.0, 1.4),
        timed("b2", "B", 0.0, 1.5, 2.5),
    ]
    assert abs(idle_while_queued(records) - 0.3) < 1e-9


def test_no_gap_counts_when_nothing_waited() -> None:
    records = [timed("a1", "A", 0.0, 0.0, 1.0), timed("a2", "A", 2.0, 2.0, 3.0)]
    assert idle_while_queued(records) == 0.0
