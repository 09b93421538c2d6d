"""Section 3: throughput with K = 1, 2, 4, 8, 16 worker processes on one queue.

Jobs use ``loadtest`` of bench/configs/simulated.toml, a simulated pipeline
(bench/loader.py): no ML; each job holds its worker's GPU thread for 0.5 s (no batching)
and then uploads a 64x64 image, so everything but the model runs as in production (API
submit, Redis, Celery's threads pool and late acks, the batcher, the job record's
transitions, S3 upload). Workers are ``python -m bench.worker`` processes (``easel
worker`` with that loader) serving a registry of ``loadtest`` alone, added between
rounds; each round submits JOBS_PER_WORKER x K async jobs through the API and waits for
all of them.

throughput = jobs / (last finish - first start); efficiency = throughput / (K x the
K = 1 throughput of the same run). Spread: jobs per worker, and the longest time a
worker's GPU thread sat between calls (the loader's call log) while some job had arrived
that no call had taken yet.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import httpx

from bench.batching_report import idle_gaps
from bench.loader import read_call_log
from bench.procs import children, cpu_s
from bench.report import Row, median, ms
from bench.stack import BenchStack, bench_queues, data_uri, sample_png, wait_all
from shared.jobs import JobStore
from shared.models import JobStatus

KS = (1, 2, 4, 8, 16)
JOBS_PER_WORKER = 10
SUBMITTERS = 4
EFFICIENCY_TARGET, IDLE_TARGET_S = 0.9, 0.1
PREFIX = "easel.bench.scale"
CALL_LOG = "calls-scaling.jsonl"  # the loader's, in the stack's state folder


def submit_all(url: str, headers: dict[str, str], count: int) -> list[str]:
    """``count`` async loadtest jobs from a few keep-alive clients; their task ids."""
    body = {"app_id": "loadtest", "image": data_uri(sample_png(64, 64)), "celery": True}
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def loop(n: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for _ in range(n):
                response = client.post("/getImageToImage", json=body)
                with lock:
                    if response.status_code == 200:
                        ids.append(response.json()["task_id"])
                    else:
                        errors.append(f"{response.status_code} {response.text[:200]}")

    shares = [count // SUBMITTERS + (1 if i < count % SUBMITTERS else 0) for i in range(SUBMITTERS)]
    threads = [threading.Thread(target=loop, args=(n,)) for n in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} loadtest submits failed, first: {errors[0]}")
    return ids


def cpu_seconds(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role's processes and their children."""
    used: dict[str, float] = {}
    for role, pids in roots.items():
        total = 0.0
        for pid in pids:
            # this process spawned all the others: count only its own time
            tree = [pid, *children(pid, recursive=True)] if pid != os.getpid() else [pid]
            total += sum(cpu_s(member) for member in tree)
        used[role] = total
    return used


def measure_round(
    stack: BenchStack, url: str, k: int, roots: dict[str, list[int]], jobs: int = 0
) -> dict[str, Any]:
    """One round with k workers live; also where the machine's CPU went meanwhile."""
    store = JobStore(stack.redis, stack.settings.job_ttl_s, stack.settings.fair_share)
    cpu_before, wall_before, began = cpu_seconds(roots), time.monotonic(), time.time()
    ids = submit_all(url, stack.headers, jobs or JOBS_PER_WORKER * k)
    records = wait_all(store, ids, 120)
    calls = read_call_log(stack.state / CALL_LOG, began, time.time())
    cpu_after, wall = cpu_seconds(roots), time.monotonic() - wall_before
    cores = {role: round((cpu_after[role] - cpu_before[role]) / wall, 2) for role in roots}
    failed = [r for r in records if r.status is not JobStatus.SUCCESS]
    if failed:
        raise RuntimeError(f"{len(failed)} loadtest jobs did not succeed: {failed[0].error}")
    first = min(r.started_at or 0 for r in records)
    last = max(r.finished_at or 0 for r in records)
    counts = Counter(str(r.worker) for r in records)
    return {
        "k": k,
        "jobs": len(records),
        "span_s": round(last - first, 3),
        "throughput_jps": round(len(records) / (last - first), 3),
        "per_worker": sorted(counts.values()),
        "workers_used": len(counts),
        "job_s_median": round(
            median([(r.finished_at or 0) - (r.started_at or 0) for r in records]), 4
        ),
        "queue_s_median": round(median([r.time_required.queue or 0 for r in records]), 4),
        "max_idle_while_queued_s": round(max(idle_gaps(calls, records), default=0.0), 4),
        "cores_used": cores,
    }


def run(stack: BenchStack) -> tuple[list[Row], dict[str, Any]]:
    """All rounds; rows for the table."""
    env = {"EASEL_QUEUES": bench_queues(PREFIX), **stack.loadtest_env(),
           "BENCH_CALL_LOG": str(stack.state / CALL_LOG)}  # fmt: skip
    queue = stack.settings_with(**env).queue_for(stack.settings.worker_gpu)
    workers: list[subprocess.Popen[bytes]] = []
    rounds = []
    try:
        with stack.api(**env) as (url, api):
            for k in KS:
                while len(workers) < k:
                    workers.append(stack.sim_worker(f"scale-{len(workers)}", **env))
                stack.wait_live(queue, k)
                if k == 1:  # the first jobs of a process pay its lazy imports and S3 client
                    measure_round(stack, url, 1, {}, jobs=2)
                roots = {"api": [api.pid], "workers": [w.pid for w in workers],
                         "redis": [stack.redis_server.process.pid],
                         "s3": [stack.s3_server.process.pid], "bench": [os.getpid()]}  # fmt: skip
                rounds.append(measure_round(stack, url, k, roots))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
    single = rounds[0]["throughput_jps"]
    section = "3 scaling (loadtest)"
    rows = []
    for result in rounds:
        k = result["k"]
        efficiency = result["throughput_jps"] / (k * single)
        result["efficiency"] = round(efficiency, 3)
        spread = result["per_worker"]
        rows.append(Row(
            section, f"K={k:>2}: {result['jobs']} jobs of 0.5 s; jobs/worker "
            f"{spread[0]}-{spread[-1]} on {result['workers_used']}/{k}",
            f"{result['throughput_jps']:.2f} jobs/s, eff {efficiency:.3f}",
            f"{k} x K=1 = {k * single:.2f} jobs/s",
            f">= {EFFICIENCY_TARGET} at K=16" if k == 16 else "",
            efficiency >= EFFICIENCY_TARGET if k == 16 else None,
        ))  # fmt: skip
    worst_idle = max(r["max_idle_while_queued_s"] for r in rounds)
    rows += [
        Row(section, "longest worker idle gap while a job waited (all K)", ms(worst_idle),
            f"job {ms(rounds[-1]['job_s_median'])}", f"< {IDLE_TARGET_S * 1000:.0f} ms",
            worst_idle < IDLE_TARGET_S),
    ]  # fmt: skip
    return rows, {"rounds": rounds}
