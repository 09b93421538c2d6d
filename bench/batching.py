"""Section 8: cross-request batching, on simulated pipelines (bench/loader.py), on the CPU.

The gains are SIMULATED: each pipeline call sleeps t(b) = b * t1 / g(b), with g from the
published figures issue 12 cites (bench/configs/simulated.toml names the profiles). What
runs for real is Easel: the API, Redis, Celery, the worker's batcher and threads, S3.

One ``easel api`` (gunicorn) and WORKERS ``python -m bench.worker`` processes on a queue no
other section uses. Each generation of workers serves a one-model registry written for it:
first the batch-1 baseline (``sim-batch1``, max_batch 1, so the worker is what ``easel
worker`` is for such a registry), then each profile with its batching on. Every
generation runs the same rounds, jobs submitted through the API (``celery: true``; at these
rates, at most a few tens of jobs/s, the API is not the bottleneck on 2 cores):

- saturation: a backlog of jobs at once; capacity from the loader's call log, per worker
  (its rows after its first call over the time from that call's end to its last's), summed;
- Poisson arrivals at 50 %, 85 % and 110 % of the measured batch-1 capacity, ROUND_S
  seconds each, the same arrival times for every generation (seeded);
- profiles only: a backlog again, with guidance_scale drawn from 12 values (12 buckets
  that never share a call), of MIXED_SLOTS x the jobs a worker holds at once (job_slots:
  3 x max_batch threads) per worker; and 85 % again over the same 12 buckets.

Latency is end to end on the record (created_at to finished_at). Goals, as ratios within
the run: G1 saturation capacity >= 0.9 x g(max_batch) x batch-1 capacity (at 110 % of
batch-1 capacity a batching worker keeps up, so its throughput there is the offered rate,
never g(max_batch) x more: capacity is measured under a backlog instead); G2 p95 at 50 %
<= batch-1 p95 + max_wait_ms, at 85 % <= batch-1 p95; G3 the realised gain (rows x t1 per
second of calls) with 12 buckets >= 0.7 x that of one bucket, both at 85 %. At 85 % on
WORKERS workers batches seldom form even with one bucket, so that G3 is met emptily; an
informative G3 row reads it on the backlogs: the 12-bucket capacity over batch-1's >= 0.7 x
the one-bucket (G1) capacity over batch-1's. A batch can only gather jobs its worker holds,
job_slots of them spread over 12 buckets, so a longer backlog forms no larger batches: it
only keeps the slots full for longer before the tail drains them.
"""

from __future__ import annotations

import queue
import random
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.batching_report import RoundData, rows_for, summarize
from bench.loader import parse_source, read_call_log
from bench.report import Row
from bench.stack import (
    SIM_REGISTRY,
    BenchStack,
    bench_queues,
    data_uri,
    sample_png,
    wait_all,
    write_registry,
)
from easel.dev import stop
from shared.jobs import JobStore
from shared.registry import ModelSpec, load_registry
from worker.celery_app import job_slots

BASELINE = "sim-batch1"
PROFILES = ("sim-a100-sd15-eager", "sim-a10g-sd15", "sim-sdxl-1024", "sim-a100-sd15-compiled")
WORKERS = 3
LOADS = {"50 %": 0.5, "85 %": 0.85, "110 %": 1.1}
ROUND_S = 10.0
SATURATION_CALLS = 4  # backlog: this many full calls per worker
MIXED_SLOTS = 2  # 12-bucket backlog: this many times the jobs a worker holds, per worker
BUCKETS = [2.0 + n for n in range(12)]  # guidance_scale values: 12 compatibility buckets
SUBMITTERS = 6
PREFIX = "easel.bench.batching"
APP_ID = "sim"  # every generation's registry names its one model so


@dataclass(frozen=True)
class Variant:
    """One generation of workers: its model, its registry file and its call log."""

    name: str
    spec: ModelSpec
    registry: Path
    call_log: Path


def write_variant(state: Path, name: str, spec: ModelSpec) -> Variant:
    """A registry of one model, APP_ID, with ``name``'s settings."""
    registry = write_registry(state / f"registry-{name}.toml", {APP_ID: spec})
    spec = load_registry(registry).get(APP_ID)
    return Variant(name, spec, registry, state / f"calls-{name}.jsonl")


def body(guidance: float, rng: random.Random, image: str) -> dict[str, Any]:
    return {"app_id": APP_ID, "image": image, "celery": True, "guidance_scale": guidance,
            "seed": rng.randrange(2**31), "prompt": f"bench {rng.randrange(10**6)}"}  # fmt: skip


def submit(url: str, headers: dict[str, str], bodies: list[dict[str, Any]],
           at: list[float] | None = None) -> list[str]:  # fmt: skip
    """Submit each body (at its offset in seconds from now, or at once); the task ids."""
    todo: queue.Queue[dict[str, Any] | None] = queue.Queue()
    ids: list[str] = []
    errors: list[str] = []

    def loop() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            while (item := todo.get()) is not None:
                response = client.post("/getImageToImage", json=item)
                if response.status_code == 200:
                    ids.append(response.json()["task_id"])
                else:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    begun = time.monotonic()
    for n, item in enumerate(bodies):
        if at is not None:
            time.sleep(max(0.0, begun + at[n] - time.monotonic()))
        todo.put(item)
    for _ in threads:
        todo.put(None)
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} batching submits failed, first: {errors[0]}")
    return ids


def poisson(rate: float, seconds: float, seed: int) -> list[float]:
    """Arrival offsets of a Poisson process of ``rate`` per second over ``seconds``."""
    rng, at, offsets = random.Random(seed), 0.0, []
    while (at := at + rng.expovariate(rate)) < seconds:
        offsets.append(at)
    return offsets


class Generation:
    """WORKERS bench workers serving one variant, and the rounds they run."""

    def __init__(self, stack: BenchStack, url: str, variant: Variant, queues: str) -> None:
        self.stack, self.url, self.variant, self.queues = stack, url, variant, queues
        self.store = JobStore(stack.redis, stack.settings.job_ttl_s, stack.settings.fair_share)
        self.image = data_uri(sample_png(64, 64))
        self.workers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Generation:
        env = {"EASEL_QUEUES": self.queues, "EASEL_MODEL_REGISTRY": str(self.variant.registry),
               "BENCH_CALL_LOG": str(self.variant.call_log)}  # fmt: skip
        name = self.variant.name
        self.workers = [self.stack.sim_worker(f"{name}-{n}", **env) for n in range(WORKERS)]
        queue_name = self.stack.settings_with(EASEL_QUEUES=self.queues).queue_for(
            self.stack.settings.worker_gpu
        )
        self.stack.wait_live(queue_name, WORKERS)
        self.round("warm-up", [7.5] * 2 * WORKERS)  # first jobs pay S3 clients and threads
        return self

    def __exit__(self, *_: object) -> None:
        stop(*self.workers, grace_s=30)

    def round(self, name: str, guidance: list[float], at: list[float] | None = None,
              rate: float = 0.0) -> RoundData:  # fmt: skip
        """Submit one job per guidance value (at ``at``), wait for all; records and calls."""
        rng = random.Random(name)
        bodies = [body(g, rng, self.image) for g in guidance]
        began = time.time()
        ids = submit(self.url, self.stack.headers, bodies, at)
        records = wait_all(self.store, ids, timeout_s=300)
        calls = read_call_log(self.variant.call_log, began, time.time())
        return RoundData(name, self.variant.name, rate, records, calls)

    def saturation(self) -> RoundData:
        """A backlog of SATURATION_CALLS full calls per worker, all submitted at once."""
        jobs = SATURATION_CALLS * WORKERS * max(self.variant.spec.max_batch, 3)
        return self.round("saturation", [7.5] * jobs)

    def mixed_saturation(self) -> RoundData:
        """A backlog of MIXED_SLOTS x job_slots jobs per worker over the 12 buckets, at once."""
        slots = job_slots(self.stack.settings, self.variant.registry)
        return self.round("saturation mixed", buckets(MIXED_SLOTS * slots * WORKERS))

    def loads(self, capacity: float, mixed: bool) -> list[RoundData]:
        """The Poisson rounds at each load; and 85 % over 12 buckets when ``mixed``."""
        rounds = []
        for label, share in LOADS.items():
            at = poisson(share * capacity, ROUND_S, seed=int(share * 100))
            rounds.append(self.round(label, [7.5] * len(at), at, share * capacity))
        if mixed:
            share = LOADS["85 %"]
            at = poisson(share * capacity, ROUND_S, seed=int(share * 100))
            rounds.append(self.round("85 % mixed", buckets(len(at)), at, share * capacity))
        return rounds


def buckets(jobs: int) -> list[float]:
    """A guidance_scale for each of ``jobs`` jobs, drawn from BUCKETS (seeded)."""
    rng = random.Random(12)
    return [rng.choice(BUCKETS) for _ in range(jobs)]


def run(stack: BenchStack) -> tuple[list[Row], dict[str, Any]]:
    """The baseline generation, then one per profile; rows for the table."""
    registry = load_registry(SIM_REGISTRY)
    variants = [write_variant(stack.state, name, registry.get(name))
                for name in (BASELINE, *PROFILES)]  # fmt: skip
    queues = bench_queues(PREFIX)
    results: dict[str, list[RoundData]] = {}
    with stack.api(EASEL_QUEUES=queues, EASEL_MODEL_REGISTRY=str(variants[0].registry)) as (
        url,
        _,
    ):
        capacity = 0.0
        for variant in variants:
            with Generation(stack, url, variant, queues) as generation:
                rounds = [generation.saturation()]
                if variant.name == BASELINE:
                    capacity = summarize(rounds[0], t1(variant))["capacity_jps"]
                else:
                    rounds.append(generation.mixed_saturation())
                profile = variant.name != BASELINE
                results[variant.name] = [*rounds, *generation.loads(capacity, profile)]
            print(f"  batching: {variant.name} done", flush=True)
    specs = {variant.name: variant.spec for variant in variants}
    return rows_for(results, specs, BASELINE)


def t1(variant: Variant) -> float:
    """Seconds of one batch-1 call of this variant's model."""
    return parse_source(variant.spec.source).cost.t1
