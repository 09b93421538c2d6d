"""The soak's result: counts, percentiles, processes and Valkey over time, the goals, met or
missed, and the tables for docs/benchmarks.md (bench.soak runs the soak; this reads it).

1. ``summarize``: what the clients saw (a ``Tally``), the audits and the samples, as one dict.
2. ``over_time``: each process's RSS and fds, and Valkey's memory, at start, middle, end and
   after the drain, and whether a process's RSS grew in the second half.
3. ``goals``: the issue's goals, each with what was measured and whether it was met.
4. ``markdown``: the tables; ``log_problems``: the error lines in the stack's logs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import percentile

if TYPE_CHECKING:
    from bench.soak import Tally

WINDOW_S = 10.0
RSS_GROWTH_MB, RSS_GROWTH_PCT = 5.0, 5.0
CLIENT = "soak client"  # sampled for reference; it keeps every result, so it grows


def summarize(config: dict[str, Any], baseline: list[float], tally: Tally,
              audits: dict[str, dict[str, Any]], samples: list[dict[str, Any]], dropped: int,
              drained_s: float) -> dict[str, Any]:  # fmt: skip
    """Counts, percentiles, processes and Valkey over time, and the goals, met or missed."""
    windows = []
    for start in range(0, int(config["seconds"]), int(WINDOW_S)):
        window = [took for at, took in tally.submit_s if start <= at < start + WINDOW_S]
        windows.append({"from_s": start} | pcts(window))
    latency = {
        "submit unloaded": pcts(baseline), "submit soak": pcts([s for _, s in tally.submit_s]),
        "end-to-end async (success)": pcts([s for op, s in tally.e2e_s if op == "async"]),
        "end-to-end sync (success)": pcts([s for op, s in tally.e2e_s if op == "sync"]),
        "end-to-end all (success)": pcts([s for _, s in tally.e2e_s]),
    }  # fmt: skip
    processes, store = over_time(samples, tally.started, config["seconds"])
    counts = count_jobs(tally, audits)
    invalid = [{"case": c, "status": s, "enveloped": e, "n": n}
               for (c, s, e), n in sorted(tally.invalid.items())]  # fmt: skip
    failures = {str(a.get("error")) for a in audits.values() if a["status"] == "FAILED"}
    return {
        "config": config, "ops": dict(tally.ops), "ops_dropped_busy": dropped,
        "drain_s": round(drained_s, 1), "counts": counts,
        "http": {f"{kind} {status}": n for (kind, status), n in sorted(tally.http.items())},
        "429_by_reason": dict(sorted(tally.refused.items())),
        "invalid": invalid,
        "invalid_all_400_enveloped": all(i["status"] == 400 and i["enveloped"] for i in invalid),
        "failures": sorted(failures)[:10], "latency_ms": latency, "submit_windows_ms": windows,
        "processes": processes, "valkey": store, "client_errors": tally.errors[:20],
        "client_errors_total": len(tally.errors),
        "goals": goals(counts, latency["submit unloaded"], windows, processes),
        "samples": samples,
    }  # fmt: skip


def pcts(seconds: list[float]) -> dict[str, float]:
    """n, and p50/p95/p99 in milliseconds."""
    if not seconds:
        return {"n": 0}
    return {"n": len(seconds)} | {
        f"p{p}": round(percentile(seconds, p) * 1000, 1) for p in (50, 95, 99)
    }


def over_time(samples: list[dict[str, Any]], started: float, seconds: float
              ) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:  # fmt: skip
    """Each process's RSS and fds, and Valkey's memory, at soak start, middle, end, after the
    drain; and each process's RSS growth (max of the last quarter vs the second quarter)."""
    timed = [(sample["at"] - started, sample) for sample in samples]
    during = [(t, s) for t, s in timed if 0 <= t <= seconds] or timed
    points = [during[0][1], min(during, key=lambda ts: abs(ts[0] - seconds / 2))[1],
              during[-1][1], timed[-1][1]]  # fmt: skip
    second = [s for t, s in during if seconds / 4 <= t < seconds / 2]
    last = [s for t, s in during if t >= 3 * seconds / 4]
    labels = list(dict.fromkeys(label for _, s in during for label in s["procs"]))
    processes: dict[str, dict[str, Any]] = {}
    for label in labels:
        row: dict[str, Any] = {
            what: [p["procs"].get(label, {}).get(what) for p in points]
            for what in ("rss_mb", "fds")
        }
        early = [s["procs"][label]["rss_mb"] for s in second if label in s["procs"]]
        late = [s["procs"][label]["rss_mb"] for s in last if label in s["procs"]]
        growth = max(late) - max(early) if early and late else 0.0
        pct = 100 * growth / max(early) if early and late else 0.0
        row |= {"growth_mb": round(growth, 1), "growth_pct": round(pct, 1),
                "growing": growth > RSS_GROWTH_MB and pct > RSS_GROWTH_PCT}  # fmt: skip
        processes[label] = row
    store = {
        "used_memory_mb": [round(p["used_memory"] / 2**20, 2) if "used_memory" in p else None
                           for p in points],
        "dbsize": [p.get("dbsize") for p in points],
    }  # fmt: skip
    return processes, store


def count_jobs(tally: Tally, audits: dict[str, dict[str, Any]]) -> dict[str, int]:
    """What became of the accepted jobs, and every answer counted by kind."""
    ended = Counter(audit["status"] for audit in audits.values())
    statuses = Counter[int]()
    for (_, status), n in tally.http.items():
        statuses[status] += n
    return {
        "accepted": len(audits), "succeeded": ended["SUCCESS"], "failed": ended["FAILED"],
        "canceled": ended["CANCELED"], "lost": ended["PENDING"] + ended["GONE"],
        "duplicated": sum(len(set(ids)) > 1 for ids in tally.groups),
        "duplicated completions": sum(bool(a.get("duplicated")) for a in audits.values()),
        "re-executed": sum(a.get("attempts", 0) > 1 for a in audits.values()),
        "idempotency groups": len(tally.groups),
        "5xx": sum(n for status, n in statuses.items() if status >= 500),
        "429 on submit": statuses[429] - tally.http[("poll", 429)],
        "429 on poll": tally.http[("poll", 429)], "400": statuses[400],
        "no answer": statuses[0],
    }  # fmt: skip


def goals(counts: dict[str, int], base: dict[str, float], windows: list[dict[str, Any]],
          processes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """The issue's goals, each with what was measured and whether it was met."""
    limit = 2 * base.get("p99", 0.0)
    over = [w for w in windows if w["n"] and w["p99"] > limit]
    worst = max((w["p99"] for w in windows if w["n"]), default=0.0)
    growing = sorted(label for label, row in processes.items()
                     if row["growing"] and label != CLIENT)  # fmt: skip
    duplicated = counts["duplicated"] + counts["duplicated completions"]
    rows = [
        ("0 lost", str(counts["lost"]), counts["lost"] == 0),
        ("0 duplicated", f"{counts['duplicated']} idempotency groups with 2+ task ids, "
         f"{counts['duplicated completions']} jobs ended twice or with extra outputs",
         duplicated == 0),
        ("0 5xx", str(counts["5xx"]), counts["5xx"] == 0),
        ("submit p99 of every 10 s window <= 2 x unloaded", f"worst {worst:.1f} ms vs "
         f"{limit:.1f} ms; {len(over)}/{len(windows)} windows over", not over),
        ("no stack process's RSS growing in the second half", ", ".join(growing) or "none",
         not growing),
    ]  # fmt: skip
    return [{"goal": goal, "measured": measured, "met": met} for goal, measured, met in rows]


def markdown(result: dict[str, Any], overload: float) -> str:
    """The soak's tables, for docs/benchmarks.md."""
    config, counts = result["config"], result["counts"]
    lines = [
        f"{config['seconds']:g} s, {config['workers']} simulated workers ({config['job_s']} s "
        f"a job), {config['threads']} client threads, {config['keys']} keys (at most "
        f"{config['inflight_per_key']} jobs in flight each), {config['target_ops_per_s']} "
        f"operations/s offered = {overload} x capacity; operations run: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result["ops"].items()))
        + f"; dropped (every thread busy): {result['ops_dropped_busy']}; "
        f"drain {result['drain_s']} s.",
        "",
        "| " + " | ".join(counts) + " |",
        "|" + "---|" * len(counts),
        "| " + " | ".join(str(v) for v in counts.values()) + " |",
        "",
        "| latency | n | p50 | p95 | p99 |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["latency_ms"].items():
        cells = [f"{row[p]:.1f} ms" if p in row else "-" for p in ("p50", "p95", "p99")]
        lines.append(f"| {name} | {row['n']} | " + " | ".join(cells) + " |")
    windows = " ".join(f"{w.get('p99', 0):.0f}" for w in result["submit_windows_ms"])
    refused = ", ".join(f"{k} {v}" for k, v in result["429_by_reason"].items()) or "none"
    lines += ["", f"Submit p99 per 10 s window (ms): {windows}", "", f"429s: {refused}", ""]
    lines += ["| process | RSS MB start / mid / end / drained | growth, 2nd half "
              "| fds start / mid / end / drained |", "|---|---|---|---|"]  # fmt: skip
    for label, row in result["processes"].items():
        rss = " / ".join("-" if v is None else f"{v:.0f}" for v in row["rss_mb"])
        fds = " / ".join("-" if v is None else str(v) for v in row["fds"])
        growth = f"{row['growth_mb']:+.1f} MB ({row['growth_pct']:+.1f} %)"
        lines.append(f"| {label} | {rss} | {growth} | {fds} |")
    store = result["valkey"]
    lines += ["", "| Valkey | start | mid | end | drained |", "|---|---|---|---|---|",
              "| used_memory MB | " + " | ".join(str(v) for v in store["used_memory_mb"]) + " |",
              "| DBSIZE | " + " | ".join(str(v) for v in store["dbsize"]) + " |",
              "", "| goal | measured | result |", "|---|---|---|"]  # fmt: skip
    for goal in result["goals"]:
        lines.append(f"| {goal['goal']} | {goal['measured']} | "
                     f"{'met' if goal['met'] else 'MISSED'} |")  # fmt: skip
    return "\n".join(lines)


def log_problems(logs: Path) -> dict[str, dict[str, Any]]:
    """Error lines, tracebacks and 5xx access lines in the stack's logs, a few per file."""
    marks = ("Traceback", '"level": "ERROR"', '"level": "CRITICAL"', '"status": 5', " ERROR/")
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(logs.glob("*.log")):
        lines = [line for line in path.read_text(errors="replace").splitlines()
                 if any(mark in line for mark in marks)]  # fmt: skip
        if lines:
            found[path.name] = {"count": len(lines), "first": [line[:300] for line in lines[:5]]}
    return found
