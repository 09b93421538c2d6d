"""Section 8's figures: from job records and the loader's call log to the table's rows."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from bench.loader import parse_source
from bench.report import Row, median, ms, percentile
from shared.models import JobRecord, JobStatus
from shared.registry import ModelSpec

SECTION = "8 batching (simulated gains)"
G1_SHARE, G3_SHARE, GAP_TARGET_S = 0.9, 0.7, 0.005


@dataclass
class RoundData:
    """What one round left: its jobs' records and the pipeline calls that ran them."""

    name: str
    variant: str
    offered_jps: float
    records: list[JobRecord]
    calls: list[dict[str, Any]]


def summarize(data: RoundData, t1: float) -> dict[str, Any]:
    """Throughput, latency, capacity, batch sizes, realised gain and idle gaps of a round."""
    failed = [r for r in data.records if r.status is not JobStatus.SUCCESS]
    if failed:
        raise RuntimeError(f"{len(failed)} {data.variant} jobs did not succeed: {failed[0].error}")
    e2e = [(r.finished_at or 0) - r.created_at for r in data.records]
    span = max(r.finished_at or 0 for r in data.records) - min(r.created_at for r in data.records)
    busy = sum(call["end"] - call["start"] for call in data.calls)
    rows = sum(call["rows"] for call in data.calls)
    gaps = idle_gaps(data.calls, data.records)
    return {
        "jobs": len(data.records),
        "offered_jps": round(data.offered_jps, 3),
        "throughput_jps": round(len(data.records) / span, 3),
        "p50_s": round(median(e2e), 4),
        "p95_s": round(percentile(e2e, 95), 4),
        # Under a backlog only (nothing offered at a rate): otherwise it is the offered rate.
        "capacity_jps": round(capacity(data.calls), 3) if not data.offered_jps else None,
        "batch_sizes": dict(sorted(Counter(call["rows"] for call in data.calls).items())),
        "realised_gain": round(rows * t1 / busy, 3) if busy else 0.0,
        "idle_gap_median_s": round(median(gaps), 4) if gaps else None,
        "idle_gaps": len(gaps),
    }


def by_worker(calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each worker's calls, in order."""
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for call in calls:
        grouped[call["pid"]].append(call)
    return [sorted(mine, key=lambda c: c["start"]) for mine in grouped.values()]


def capacity(calls: list[dict[str, Any]]) -> float:
    """Jobs/s the workers sustain: per worker, the rows of its calls after the first over
    the time from the first's end to the last's end (idle gaps included), summed."""
    total = 0.0
    for mine in by_worker(calls):
        if len(mine) >= 2:
            total += sum(c["rows"] for c in mine[1:]) / (mine[-1]["end"] - mine[0]["end"])
    return total


def idle_gaps(calls: list[dict[str, Any]], records: list[JobRecord]) -> list[float]:
    """Gaps between a worker's consecutive calls during which some job had arrived and no
    call had taken it yet (arrivals so far outnumber the rows of calls started)."""
    arrivals = sorted(r.created_at for r in records)
    starts = sorted((c["wall_start"], c["rows"]) for c in calls)
    gaps = []
    for mine in by_worker(calls):
        for before, after in itertools.pairwise(mine):
            begun, ended = before["wall_end"], after["wall_start"]
            arrived = sum(1 for at in arrivals if at <= begun)
            taken = sum(rows for at, rows in starts if at < ended)  # ``after`` not included
            if arrived > taken:
                gaps.append(ended - begun)
    return gaps


def histogram(sizes: dict[int, int]) -> str:
    """Batch sizes as ``size x calls``."""
    return " ".join(f"{size}x{count}" for size, count in sizes.items())


def rows_for(
    results: dict[str, list[RoundData]], specs: dict[str, ModelSpec], baseline: str
) -> tuple[list[Row], dict[str, Any]]:
    """The table's rows: the batch-1 baseline, then each profile against it."""
    summaries = {
        variant: {data.name: summarize(data, parse_source(specs[variant].source).cost.t1)
                  for data in rounds}
        for variant, rounds in results.items()
    }  # fmt: skip
    base = summaries[baseline]
    rows = [Row(SECTION, f"batch-1 baseline ({baseline}): capacity, backlog",
                f"{base['saturation']['capacity_jps']:.2f} jobs/s", "", "", None)]  # fmt: skip
    for label in ("50 %", "85 %", "110 %"):
        rows.append(Row(SECTION, f"  batch-1 at {label} ({base[label]['offered_jps']:.2f} jobs/s)",
                        figures(base[label]), "", "", None))  # fmt: skip
    for variant, spec in specs.items():
        if variant != baseline:
            rows += profile_rows(variant, spec, summaries[variant], base)
    return rows, {"summaries": summaries, "specs": {k: v.model_dump() for k, v in specs.items()}}


def figures(summary: dict[str, Any]) -> str:
    return (f"{summary['throughput_jps']:.2f} jobs/s, p50 {ms(summary['p50_s'])}, "
            f"p95 {ms(summary['p95_s'])}; calls {histogram(summary['batch_sizes'])}")  # fmt: skip


def profile_rows(
    variant: str, spec: ModelSpec, mine: dict[str, Any], base: dict[str, Any]
) -> list[Row]:
    """G1, G2, G3 and the idle gap of one profile, each beside its batch-1 figure."""
    cost = parse_source(spec.source).cost
    g_max, wait_s = cost.gain(spec.max_batch), spec.max_wait_ms / 1000
    name = f"{variant} (max_batch {spec.max_batch}, g = {g_max:g})"
    sat, base_sat = mine["saturation"], base["saturation"]
    wanted = G1_SHARE * g_max * base_sat["capacity_jps"]
    gap, base_gap = sat["idle_gap_median_s"], base_sat["idle_gap_median_s"]
    ratio = sat["capacity_jps"] / base_sat["capacity_jps"]
    return [
        Row(SECTION, f"{name}: G1 capacity, backlog; calls {histogram(sat['batch_sizes'])}",
            f"{sat['capacity_jps']:.2f} jobs/s ({ratio:.2f}x)",
            f"batch-1 {base_sat['capacity_jps']:.2f} jobs/s",
            f">= {wanted:.2f} (0.9 x g x batch-1)", sat["capacity_jps"] >= wanted),
        Row(SECTION, f"  G2 at 50 %: {figures(mine['50 %'])}", ms(mine["50 %"]["p95_s"]),
            f"batch-1 p95 {ms(base['50 %']['p95_s'])}", f"<= batch-1 + {spec.max_wait_ms:g} ms",
            mine["50 %"]["p95_s"] <= base["50 %"]["p95_s"] + wait_s),
        Row(SECTION, f"  G2 at 85 %: {figures(mine['85 %'])}", ms(mine["85 %"]["p95_s"]),
            f"batch-1 p95 {ms(base['85 %']['p95_s'])}", "<= batch-1 p95",
            mine["85 %"]["p95_s"] <= base["85 %"]["p95_s"]),
        Row(SECTION, f"  at 110 %: {figures(mine['110 %'])}", ms(mine["110 %"]["p95_s"]),
            f"batch-1 p95 {ms(base['110 %']['p95_s'])}, "
            f"{base['110 %']['throughput_jps']:.2f} jobs/s", "", None),
        *g3_rows(mine, base_sat),
        Row(SECTION, "  median GPU idle gap while a job waited (backlog)",
            "-" if gap is None else ms(gap), "-" if base_gap is None else f"batch-1 {ms(base_gap)}",
            f"<= {GAP_TARGET_S * 1000:.0f} ms", None if gap is None else gap <= GAP_TARGET_S),
    ]  # fmt: skip


def g3_rows(mine: dict[str, Any], base_sat: dict[str, Any]) -> list[Row]:
    """G3 at 85 % (issue 12's), then on the backlogs (informative: batches form there)."""
    single, mixed = mine["85 %"]["realised_gain"], mine["85 % mixed"]["realised_gain"]
    sat, mixed_sat = mine["saturation"], mine["saturation mixed"]
    one = sat["capacity_jps"] / base_sat["capacity_jps"]
    twelve = mixed_sat["capacity_jps"] / base_sat["capacity_jps"]
    return [
        Row(SECTION, f"  G3 85 %, 12 buckets: calls {histogram(mine['85 % mixed']['batch_sizes'])}",
            f"realised gain {mixed:.3f}", f"1 bucket {single:.3f}",
            f">= {G3_SHARE} x 1 bucket", mixed >= G3_SHARE * single),
        Row(SECTION, "  G3 backlog, 12 buckets (informative; gain = capacity / batch-1's): "
            f"calls {histogram(mixed_sat['batch_sizes'])}",
            f"gain {twelve:.2f}x ({mixed_sat['capacity_jps']:.2f} jobs/s)",
            f"1 bucket {one:.2f}x", f">= {G3_SHARE} x 1 bucket", twelve >= G3_SHARE * one),
    ]  # fmt: skip
