"""Section 9's arithmetic (bench/fairness_report.py) on made-up job timings."""

from __future__ import annotations

import pytest

from bench.fairness_report import (
    Timing,
    conserving_met,
    contended_starts,
    fair_positions,
    flood_met,
    flood_models,
    flood_summary,
    model_wait,
    position_errors,
    rows_for,
    share_met,
    share_summary,
    start_order,
    submit_met,
    submit_summary,
    throughput_summary,
)

T1 = 0.05


def job(owner: str, created: float, started: float, run: float = T1) -> Timing:
    return Timing(owner, created, started, started + run)


def test_the_nth_start_comes_n_minus_a_half_over_workers_durations_later_plus_held_jobs() -> None:
    assert model_wait(1, workers=2) == pytest.approx(0.25)
    assert model_wait(10, workers=2) == pytest.approx(4.75)
    assert model_wait(10, workers=2, slots=3) == pytest.approx(6.75)  # behind 2 held jobs


def test_a_newcomer_interleaves_one_for_one_and_ties_go_to_the_smaller_owner() -> None:
    # B enters at the pass of the job just started, A's head one stride later: B goes
    # first, then each tie goes to the owner that sorts first.
    assert fair_positions(4, "b", "a") == [1, 3, 5, 7]
    assert fair_positions(4, "a", "b") == [1, 2, 4, 6]


def test_a_heavier_newcomer_takes_three_starts_of_four() -> None:
    positions = fair_positions(9, "h", "l", weights=(3, 1))
    assert positions == [1, 2, 3, 4, 6, 7, 8, 10, 11]


def test_no_order_starts_ten_jobs_on_two_single_job_workers_within_three_durations() -> None:
    models = flood_models(10, ahead=330, victim="b", other="a", workers=2, slots=3)
    assert models["b_first_single_job"] == pytest.approx(4.75)  # the floor: B first
    assert models["fair_single_job"] == pytest.approx(9.25)  # the 19th start
    assert models["fair"] == pytest.approx(11.25)  # and 2 held jobs ahead
    assert models["fifo"] == pytest.approx((340 - 0.5) / 2 + 2)  # behind all of A's
    assert not flood_met(models["b_first_single_job"])


def test_a_flood_summary_reads_the_victims_waits_in_durations() -> None:
    flood = [job("a", 0.0, 0.1 * n + 0.01) for n in range(11)]
    victim = [job("b", 0.2, 0.2 + 0.05 * n) for n in range(1, 11)]  # waits 0.05 .. 0.5 s
    summary = flood_summary(flood + victim, "b", "a", T1, workers=2)
    assert (summary["min"], summary["p50"], summary["p95"]) == (1.0, 5.5, 10.0)  # p95 of 10: max
    assert summary["p95_s"] == pytest.approx(0.5)
    assert summary["mean_run_s"] == pytest.approx(T1)
    assert summary["order_after_victim_arrived"].startswith("aBBaBBa")


def test_start_order_spells_who_started_from_a_moment_on() -> None:
    timings = [job("x", 0, 3), job("y", 0, 1), job("x", 0, 2), job("y", 0, 0.5)]
    assert start_order(timings, {"x": "X", "y": "y"}, since=1.0) == "yXX"


def test_a_position_promises_how_many_jobs_start_before_the_job() -> None:
    timings = [job("a", 0.0, 0.10, run=0), job("a", 0.0, 0.20, run=0),
               Timing("b", 0.05, 0.30, 0.30, "b1"), Timing("b", 0.06, 0.40, 0.40, "b2"),
               job("a", 0.0, 0.35, run=0)]  # fmt: skip
    # b1 was promised position 3: two jobs start first (a at 0.10, a at 0.20); b2 was
    # promised 4 and saw four starts before it: one more than promised.
    assert position_errors(timings, {"b1": 3, "b2": 4, "a-none": None}) == [0, 1]


def test_only_starts_while_every_key_had_a_job_waiting_count() -> None:
    timings = [
        job("h", 0.0, 0.1),  # before l submitted anything: not counted
        job("h", 0.0, 0.3),
        job("l", 0.2, 0.4),
        job("h", 0.0, 0.5),  # h's last: counted, then h has nothing waiting
        job("l", 0.2, 0.6),  # not counted
    ]
    assert contended_starts(timings) == {"h": 2, "l": 1}


def test_the_heavy_share_is_of_the_contended_starts() -> None:
    heavy = [job("h", 0.0, 0.01 * n) for n in range(1, 31)]
    light = [job("l", 0.0, 0.04 * n + 0.001) for n in range(1, 21)]
    summary = share_summary(heavy + light, "h", "l")
    assert summary["contended_starts"] == {"heavy": 30, "light": 7}
    assert summary["heavy_share"] == pytest.approx(30 / 37, abs=1e-4)


def test_throughput_runs_from_the_first_start_to_the_last_end() -> None:
    summary = throughput_summary([job("k", 0, 1.0, run=0.5), job("k", 0, 1.5, run=0.5)])
    assert summary["throughput_jps"] == pytest.approx(2.0)
    assert summary["mean_run_s"] == pytest.approx(0.5)


def test_submit_summary_is_nearest_rank() -> None:
    summary = submit_summary([0.001 * n for n in range(1, 101)])
    assert (summary["p50_s"], summary["p95_s"]) == (pytest.approx(0.0505), pytest.approx(0.095))


def test_goal_verdicts_at_their_edges() -> None:
    assert flood_met(3.0) and not flood_met(3.01)
    assert share_met(0.70) and share_met(0.80) and not share_met(0.69) and not share_met(0.81)
    assert conserving_met(97.0, 100.0) and not conserving_met(96.9, 100.0)
    assert submit_met(0.0059, 0.0050) and not submit_met(0.0061, 0.0050)


def made_up_results() -> dict[str, object]:
    flood = {"min": 1.5, "p50": 5.0, "p95": 9.7, "max": 9.7, "p50_s": 0.25, "p95_s": 0.485,
             "p95_cycles": 9.3, "mean_run_s": 0.06, "start_interval_x_workers_s": 0.052,
             "ahead": 330, "models": flood_models(10, 330, "b", "a", 2, 3),
             "position_errors": [0, -1, 2]}  # fmt: skip
    fifo_flood = flood | {"min": 165.0, "p50": 172.0, "p95": 174.0, "max": 174.0, "p95_s": 8.7}
    wide = {"jobs": 320, "throughput_jps": 30.0, "workers_rss_mb": 4096, "workers_cores": 1.1}
    submit = {"requests": 300, "p50_s": 0.0088}
    return {
        "fair": {"flood": flood, "flood_single_job": flood, "wide": wide, "submit": submit,
                 "weighted": {"heavy_share": 0.75, "contended_starts": {"heavy": 300,
                                                                        "light": 100}}},
        "fifo": {"flood": fifo_flood, "wide": wide | {"throughput_jps": 30.9},
                 "submit": submit | {"p50_s": 0.0087},
                 "weighted": {"heavy_share": 0.5, "contended_starts": {"heavy": 300,
                                                                       "light": 300}}},
        "config": {"flood_t1_s": 0.05, "long_t1_s": 0.5, "slots": 3, "flood_workers": 2,
                   "wide_workers": 16, "flood_jobs": 400, "flood_victim": 10,
                   "weights": [3, 1], "weighted_jobs": 300, "submits": 300},
    }  # fmt: skip


def test_rows_stand_each_goal_beside_its_fifo_figure() -> None:
    rows, details = rows_for(made_up_results())
    assert [row.met for row in rows] == [
        False,  # flood: B's p95 9.7 > 3 durations
        None,  # min / p50 / max
        None,  # queue positions
        None,  # the models
        False,  # single-job workers: 9.7 > 3 too
        None,  # measured job
        True,  # weights: 0.75
        True,  # work-conserving: 30 / 30.9 = 0.971
        True,  # submit: +0.1 ms
    ]
    assert "FIFO 174.0 t1" in rows[0].baseline
    assert "floor 4.75 t1" in rows[3].target
    assert rows[2].value == "-1 to +2"
    assert details["config"]["slots"] == 3
