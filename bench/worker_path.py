"""Sections 4 and 2: warm workers, and what a job costs beyond its pipeline.

One real worker (``easel worker --gpu a10g``, tiny-sd warm, 2 torch threads) behind one
``easel api``. Every job is a sync (``celery: false``) request at 512x512.

4. Warm worker: the first tiny-sdxl job loads it (the cold load time); the second spends
   0 s in load; alternating tiny-sd and tiny-sdxl, which both fit the pipeline cache,
   never reloads either.
2. Orchestration overhead: 20 tiny-sd jobs one at a time; the end-to-end time the client
   sees minus the pipeline's own time inside the worker (``time_required.inference`` +
   ``load``). Redis's command counts over these jobs feed docs/scaling.md.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx

from bench.procs import cpu_s
from bench.report import Row, median, ms
from bench.stack import ROOT, BenchStack, data_uri, sample_png

JOBS = 20
ALTERNATIONS = 3
OVERHEAD_TARGET_S, OVERHEAD_SHARE_TARGET = 0.050, 0.05
GENERATE = (
    "from pathlib import Path; import sys; from worker.tiny_models import ensure_tiny_model; "
    "[ensure_tiny_model(n, Path(sys.argv[1])) for n in ('tiny-sd', 'tiny-sdxl')]"
)


def sync_job(client: httpx.Client, app_id: str, image: str) -> tuple[dict[str, Any], float]:
    """One ``celery: false`` job; its final envelope and the seconds the client waited."""
    body = {"app_id": app_id, "image": image, "celery": False, "width": 512, "height": 512}
    started = time.perf_counter()
    response = client.post("/getImageToImage", json=body)
    waited = time.perf_counter() - started
    envelope: dict[str, Any] = response.json()
    if response.status_code != 200 or envelope["status"] != "SUCCESS":
        raise RuntimeError(f"{app_id} job did not succeed: {response.status_code} {envelope}")
    return envelope, waited


def command_counts(stack: BenchStack) -> dict[str, int]:
    """Calls per Redis command since the last CONFIG RESETSTAT."""
    stats: dict[str, Any] = stack.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def warm_rows(client: httpx.Client, image: str) -> tuple[list[Row], dict[str, Any]]:
    """Section 4."""
    cold, _ = sync_job(client, "tiny-sdxl", image)
    second, _ = sync_job(client, "tiny-sdxl", image)
    alternating = []
    for _ in range(ALTERNATIONS):
        for app_id in ("tiny-sd", "tiny-sdxl"):
            envelope, _ = sync_job(client, app_id, image)
            alternating.append((app_id, envelope["time_required"]["load"]))
    cold_load = cold["time_required"]["load"]
    second_load = second["time_required"]["load"]
    worst = max(load for _, load in alternating)
    section = "4 warm worker"
    rows = [
        Row(section, "tiny-sdxl cold load (first job after worker start)", f"{cold_load:.2f} s"),
        Row(section, "tiny-sdxl second job: load", f"{second_load:.3f} s",
            f"cold {cold_load:.2f} s", "0 s", second_load == 0),
        Row(section, f"sd/sdxl alternating x{ALTERNATIONS}: max load", f"{worst:.3f} s",
            f"cold {cold_load:.2f} s", "0 s (no reload)", worst == 0),
    ]  # fmt: skip
    details = {"cold": cold["time_required"], "second": second["time_required"],
               "alternating_loads": alternating}  # fmt: skip
    return rows, details


def overhead_rows(stack: BenchStack, client: httpx.Client, image: str) -> tuple[list[Row], Any]:
    """Section 2."""
    stack.redis.config_resetstat()
    redis_cpu = cpu_s(stack.redis_server.process.pid)
    jobs = []
    for _ in range(JOBS):
        envelope, waited = sync_job(client, "tiny-sd", image)
        times = envelope["time_required"]
        pipeline = times["inference"] + times["load"]
        jobs.append({"end_to_end_s": waited, "pipeline_s": pipeline,
                     "overhead_s": waited - pipeline, "queue_s": times["queue"],
                     "upload_s": times["upload"], "total_s": times["total"]})  # fmt: skip
    commands = command_counts(stack)
    redis_cpu = cpu_s(stack.redis_server.process.pid) - redis_cpu
    overhead = median([job["overhead_s"] for job in jobs])
    share = median([job["overhead_s"] / job["end_to_end_s"] for job in jobs])
    pipeline = median([job["pipeline_s"] for job in jobs])
    end_to_end = median([job["end_to_end_s"] for job in jobs])
    parts = {name: median([job[f"{name}_s"] for job in jobs]) for name in ("queue", "upload")}
    section = "2 orchestration"
    rows = [
        Row(section, f"end to end, tiny-sd 512x512 sync, median of {JOBS}", ms(end_to_end),
            f"pipeline {ms(pipeline)}"),
        Row(section, "overhead = end to end - (inference + load)", ms(overhead),
            f"pipeline {ms(pipeline)}", f"<= {OVERHEAD_TARGET_S * 1000:.0f} ms",
            overhead <= OVERHEAD_TARGET_S),
        Row(section, "overhead share of end to end (median)", f"{share * 100:.1f} %", "",
            f"<= {OVERHEAD_SHARE_TARGET * 100:.0f} %", share <= OVERHEAD_SHARE_TARGET),
        Row(section, "  of which queue wait / S3 upload (medians)",
            f"{ms(parts['queue'])} / {ms(parts['upload'])}"),
    ]  # fmt: skip
    return rows, {"jobs": jobs, "redis_cpu_ms_per_job": round(redis_cpu / JOBS * 1e3, 3),
                  "redis_calls_per_job": {
        name: round(count / JOBS, 2) for name, count in sorted(commands.items())}}  # fmt: skip


def run(stack: BenchStack) -> tuple[list[Row], dict[str, Any]]:
    """Sections 4 then 2 on one warm worker."""
    models = str(stack.state / "models")
    generate = subprocess.Popen(
        [sys.executable, "-c", GENERATE, models], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = stack.worker("warm", EASEL_WARM_MODELS='["tiny-sd"]', EASEL_TORCH_THREADS="2")
    try:
        if generate.wait() != 0:
            raise RuntimeError("generating the tiny models failed")
        with (
            stack.api() as (url, _),
            httpx.Client(base_url=url, headers=stack.headers, timeout=120) as client,
        ):
            stack.wait_live(stack.settings.queue_for(stack.settings.worker_gpu), 1)
            image = data_uri(sample_png(512, 512))
            warm, warm_details = warm_rows(client, image)
            overhead, overhead_details = overhead_rows(stack, client, image)
    finally:
        from easel.dev import stop

        stop(worker)
    return warm + overhead, {"warm": warm_details, "overhead": overhead_details}
