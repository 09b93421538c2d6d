"""Section 9's figures: from job timings to the table's rows, with the models beside them.

A job *duration* is t1, the simulated time of one job (max_batch 1: one job, one call of
t1). Waits are read against a model of what an order can give at best, not against zero:

- jobs start ``workers`` per duration, evenly spread, so the job that is the n-th to start
  after some moment starts (n - 1/2) / workers durations after it, on average over where
  in their jobs the workers were;
- a popped job then waits behind the jobs its worker already holds: ``slots`` - 1 of them
  (``easel worker`` holds job_slots = 3 x max_batch: one on the GPU, one fetching, one
  uploading; ``--concurrency 1`` holds one).

So B's 10 jobs behind A's flood, on 2 single-job workers, start at best (B first, any
order that keeps the workers busy and never stops a job) 4.75 durations after they arrive
for the 10th (4 when both workers happen to free at once); in 1:1 fair order, interleaved
with A's, 9.25; and 2 more with 3 job slots a worker.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.report import Row, median, ms, percentile
from shared import fairness

SECTION = "9 fair share (simulated jobs)"
FLOOD_GOAL = 3.0  # B's p95 queue wait, in durations (the issue's)
SHARE_GOAL, SHARE_TOLERANCE = 0.75, 0.05  # the heavier key's share at weights 3:1
CONSERVING_GOAL = 0.97  # fair throughput over FIFO's, one key alone
SUBMIT_GOAL_S = 0.001  # fair submit p50 over FIFO's
ORDER_SHOWN = 40  # starts shown as a string of key letters, for reading the order


@dataclass(frozen=True)
class Timing:
    """One job: whose it was, and when it was submitted, admitted to a call and ended."""

    owner: str
    created: float
    started: float
    finished: float
    task_id: str = ""


def model_wait(position: int, workers: int, slots: int = 1) -> float:
    """Durations waited, in the model above, by the ``position``-th job to start."""
    return (position - 0.5) / workers + (slots - 1)


def fair_positions(
    jobs: int, mine: str, other: str, weights: tuple[int, int] = (1, 1)
) -> list[int]:
    """The place among the starts of each of ``jobs`` jobs that ``mine`` submits behind
    ``other``'s long backlog, in POP's own order (shared/fairness.py): the new lane enters
    at the pass of the last job started, ``other``'s head sits one stride past it."""
    mine_stride, other_stride = fairness.stride(weights[0]), fairness.stride(weights[1])
    lanes = [
        fairness.Lane(other.encode(), other_stride, other_stride, 10**9),
        fairness.Lane(mine.encode(), 0, mine_stride, jobs),
    ]
    return [fairness.started_before(lanes, mine.encode(), i) + 1 for i in range(jobs)]


def p95_model(positions: Iterable[int], workers: int, slots: int) -> float:
    """The model's p95 wait, in durations, of jobs starting at these places."""
    return percentile([model_wait(p, workers, slots) for p in positions], 95)


def flood_models(
    jobs: int, ahead: int, victim: str, other: str, workers: int, slots: int
) -> dict[str, float]:
    """The model's p95 wait of the victim's jobs: B first on single-job workers (no order
    does better), 1:1 fair order on single-job workers and with ``slots``, and FIFO behind
    the ``ahead`` jobs that waited when B submitted."""
    fair = fair_positions(jobs, victim, other)
    return {
        "b_first_single_job": round(p95_model(range(1, jobs + 1), workers, 1), 2),
        "fair_single_job": round(p95_model(fair, workers, 1), 2),
        "fair": round(p95_model(fair, workers, slots), 2),
        "fifo": round(p95_model(range(ahead + 1, ahead + jobs + 1), workers, slots), 2),
    }


def start_order(timings: list[Timing], letters: dict[str, str], since: float) -> str:
    """The owners of the first ORDER_SHOWN jobs that started from ``since``, a letter each."""
    started = sorted((t.started, letters.get(t.owner, "?")) for t in timings if t.started >= since)
    return "".join(letter for _, letter in started[:ORDER_SHOWN])


def flood_summary(
    timings: list[Timing], victim: str, other: str, t1: float, workers: int
) -> dict[str, Any]:
    """The victim's queue waits (created to started), in seconds and durations; the
    measured run time (started to finished) and start interval x workers; the order."""
    waits = [t.started - t.created for t in timings if t.owner == victim]
    starts = sorted(t.started for t in timings)
    figures = {"min": min(waits), "p50": median(waits), "p95": percentile(waits, 95),
               "max": max(waits)}  # fmt: skip
    summary: dict[str, Any] = {f"{k}_s": round(v, 4) for k, v in figures.items()}
    summary |= {k: round(v / t1, 2) for k, v in figures.items()}
    since = min(t.created for t in timings if t.owner == victim)
    cycle = workers * (starts[-1] - starts[0]) / (len(starts) - 1)
    return summary | {
        "victim_jobs": len(waits),
        "jobs": len(timings),
        "t1_s": t1,
        "mean_run_s": round(statistics.fmean(t.finished - t.started for t in timings), 4),
        "start_interval_x_workers_s": round(cycle, 4),
        "p95_cycles": round(figures["p95"] / cycle, 2),
        "order_after_victim_arrived": start_order(timings, {other: "a", victim: "B"}, since),
    }


def position_errors(timings: list[Timing], positions: dict[str, int | None]) -> list[int]:
    """For each job with a queue position at submit: the jobs that started between its
    submit and its start, less the position's promise (position - 1). Starts are the GPU's
    admissions, in each worker's own order, so a few either way is the workers' slack."""
    errors = []
    for job in timings:
        position = positions.get(job.task_id)
        if position is not None:
            before = sum(1 for t in timings if job.created < t.started < job.started)
            errors.append(before - (position - 1))
    return errors


def contended_starts(timings: list[Timing]) -> Counter[str]:
    """Starts per key made while every key had a job waiting (submitted, not started);
    ``started`` is the GPU's admission, so jobs a worker holds count as waiting."""
    owners = {t.owner for t in timings}
    events = sorted([(t.created, 0, t.owner) for t in timings] +
                    [(t.started, 1, t.owner) for t in timings])  # fmt: skip
    waiting: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    for _, is_start, owner in events:
        if not is_start:
            waiting[owner] += 1
            continue
        if all(waiting[each] > 0 for each in owners):
            counted[owner] += 1
        waiting[owner] -= 1
    return counted


def share_summary(timings: list[Timing], heavy: str, light: str) -> dict[str, Any]:
    """The heavier key's share of the starts while both keys waited, and the order."""
    counted = contended_starts(timings)
    total = counted[heavy] + counted[light]
    first_light = min(t.started for t in timings if t.owner == light)
    return {
        "jobs": len(timings),
        "contended_starts": {"heavy": counted[heavy], "light": counted[light]},
        "heavy_share": round(counted[heavy] / total, 4) if total else 0.0,
        "order_from_first_light_start": start_order(timings, {heavy: "H", light: "l"}, first_light),
    }


def throughput_summary(timings: list[Timing]) -> dict[str, Any]:
    """Jobs per second from the first start to the last end, and the per-job run time."""
    span = max(t.finished for t in timings) - min(t.started for t in timings)
    return {
        "jobs": len(timings),
        "span_s": round(span, 3),
        "throughput_jps": round(len(timings) / span, 3),
        "mean_run_s": round(statistics.fmean(t.finished - t.started for t in timings), 4),
    }


def submit_summary(latencies: list[float]) -> dict[str, Any]:
    """p50, p95 and mean of sequential submits' round trips."""
    return {"requests": len(latencies), "p50_s": round(median(latencies), 5),
            "p95_s": round(percentile(latencies, 95), 5),
            "mean_s": round(statistics.fmean(latencies), 5)}  # fmt: skip


def spread(errors: list[int]) -> str:
    """Position errors as ``min to max``, ``-`` if there are none."""
    return f"{min(errors):+d} to {max(errors):+d}" if errors else "-"


def flood_met(p95_durations: float) -> bool:
    return p95_durations <= FLOOD_GOAL


def share_met(share: float) -> bool:
    return abs(share - SHARE_GOAL) <= SHARE_TOLERANCE + 1e-9


def conserving_met(fair_jps: float, fifo_jps: float) -> bool:
    return fair_jps >= CONSERVING_GOAL * fifo_jps


def submit_met(fair_p50_s: float, fifo_p50_s: float) -> bool:
    return fair_p50_s - fifo_p50_s <= SUBMIT_GOAL_S


def rows_for(results: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    """The table's rows, fair beside FIFO; ``results`` is fairness.run's summaries."""
    fair, fifo, config = results["fair"], results["fifo"], results["config"]
    rows = [*flood_rows(fair, fifo, config)]
    share, base = fair["weighted"]["heavy_share"], fifo["weighted"]["heavy_share"]
    counts = fair["weighted"]["contended_starts"]
    rows.append(Row(
        SECTION, f"weights {config['weights'][0]}:{config['weights'][1]}, "
        f"{config['flood_workers']} workers, {config['weighted_jobs']} jobs each submitted "
        "interleaved: heavy key's share of the starts while both waited",
        f"{share:.3f} ({counts['heavy']} vs {counts['light']})", f"FIFO {base:.3f}",
        f"{SHARE_GOAL} +/- {SHARE_TOLERANCE}", share_met(share)))  # fmt: skip
    wide, wide_base = fair["wide"]["throughput_jps"], fifo["wide"]["throughput_jps"]
    rows.append(Row(
        SECTION, f"work-conserving: one key, {config['wide_workers']} workers "
        f"({fair['wide']['workers_rss_mb'] / 1024:.1f} GiB RSS, "
        f"{fair['wide']['workers_cores']:.2f} cores), "
        f"{fair['wide']['jobs']} jobs of {ms(config['long_t1_s'])}: throughput",
        f"{wide:.2f} jobs/s ({wide / wide_base:.3f} of FIFO)", f"FIFO {wide_base:.2f} jobs/s",
        f">= {CONSERVING_GOAL} x FIFO", conserving_met(wide, wide_base)))  # fmt: skip
    p50, base_p50 = fair["submit"]["p50_s"], fifo["submit"]["p50_s"]
    rows.append(Row(
        SECTION, f"submit p50, {fair['submit']['requests']} sequential celery:true submits "
        "a mode, alternating", f"{ms(p50)} ({(p50 - base_p50) * 1000:+.2f} ms)",
        f"FIFO {ms(base_p50)}", f"<= FIFO + {SUBMIT_GOAL_S * 1000:.0f} ms",
        submit_met(p50, base_p50)))  # fmt: skip
    return rows, results


def flood_rows(fair: dict[str, Any], fifo: dict[str, Any], config: dict[str, Any]) -> list[Row]:
    """B's waits behind A's flood, fair and FIFO, each beside its model."""
    mine, base, solo = fair["flood"], fifo["flood"], fair["flood_single_job"]
    models, base_models = mine["models"], base["models"]
    t1 = f"t1 {ms(config['flood_t1_s'])}"
    return [
        Row(SECTION, f"flood: {config['flood_workers']} workers, key A {config['flood_jobs']} "
            f"jobs then key B {config['flood_victim']} ({t1}, weights 1:1): B's p95 queue wait",
            f"{mine['p95']:.2f} t1 ({ms(mine['p95_s'])})",
            f"FIFO {base['p95']:.1f} t1 ({ms(base['p95_s'])})", f"<= {FLOOD_GOAL:g} t1",
            flood_met(mine["p95"])),
        Row(SECTION, "  B's min / p50 / max queue wait",
            f"{mine['min']:.2f} / {mine['p50']:.2f} / {mine['max']:.2f} t1",
            f"FIFO {base['min']:.1f} / {base['p50']:.1f} / {base['max']:.1f} t1"),
        Row(SECTION, "  B's queue_position at submit: jobs that started before it less the "
            "position's promise, min to max", spread(mine["position_errors"]),
            f"FIFO {spread(base['position_errors'])}"),
        Row(SECTION, f"  model p95: fair 1:1 with {config['slots']} job slots a worker; "
            f"FIFO behind the {base['ahead']} jobs A had waiting",
            f"{models['fair']:.2f} t1", f"FIFO {base_models['fifo']:.1f} t1",
            f"floor {models['b_first_single_job']:.2f} t1 (B first, single-job workers)"),
        Row(SECTION, "  same flood, fair, single-job workers (--concurrency 1): B's p95; "
            "a cycle is a worker's time per job (start interval x workers)",
            f"{solo['p95']:.2f} t1 ({ms(solo['p95_s'])}) = {solo['p95_cycles']:.2f} cycles "
            f"of {ms(solo['start_interval_x_workers_s'])}",
            f"model {solo['models']['fair_single_job']:.2f} cycles", f"<= {FLOOD_GOAL:g} t1",
            flood_met(solo["p95"])),
        Row(SECTION, "  measured job: mean run (started to finished); start interval x workers",
            f"{ms(mine['mean_run_s'])}; {ms(mine['start_interval_x_workers_s'])}",
            f"FIFO {ms(base['mean_run_s'])}; {ms(base['start_interval_x_workers_s'])}"),
    ]  # fmt: skip
