"""``python -m bench.profiles rss``: a fresh child's VmRSS after each step, as a table."""

from __future__ import annotations

import os

import pytest

from bench.profiles import measure_rss, rss_table


def test_each_step_is_read_in_order_in_one_fresh_process() -> None:
    steps = [("Python alone", "pass"), ("a 20 MB list", "held = [0] * (20 * 2**20 // 8)"),
             ("still held", "assert len(held) > 0")]  # fmt: skip
    readings = measure_rss(steps, dict(os.environ))
    assert [label for label, _ in readings] == ["Python alone", "a 20 MB list", "still held"]
    alone, grown, held = (rss for _, rss in readings)
    assert 1 < alone < grown and grown - alone > 15 and held >= grown - 1


def test_a_failing_step_raises_with_the_child_traceback() -> None:
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        measure_rss([("Python alone", "pass"), ("broken", "1 / 0")], dict(os.environ))


def test_the_table_gives_each_step_what_it_added() -> None:
    table = rss_table([("Python alone", 10.0), ("import flask", 29.5), ("create_app", 31.0)])
    assert table.splitlines()[2:] == [
        "| Python alone | 10.0 MB |  |",
        "| import flask | 29.5 MB | +19.5 MB |",
        "| create_app | 31.0 MB | +1.5 MB |",
    ]
