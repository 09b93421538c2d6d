"""Section 9: fair share across API keys, on simulated jobs (bench/loader.py), on the CPU.

Jobs start in weighted fair order across API keys (shared/fairness.py); with
EASEL_FAIR_SHARE=false every job of a GPU class waits in one FIFO lane: the baseline. Every
API and worker of a queue must agree, so each mode gets its own ``easel api`` and its own
bench-only queues on the stack's Valkey and S3. Both APIs stay up; the workers (``python -m
bench.worker``, a10g) run one mode at a time. The keys are stored keys (``KeyStore``),
each with a rate and an in-flight cap far above what a round sends.

Each mode runs, on its a10g queue:

- flood: FLOOD_WORKERS workers; key A submits FLOOD_JOBS ``sim-fair-short`` jobs (t1 =
  0.05 s, max_batch 1) from SUBMITTERS clients, then key B FLOOD_VICTIM; B's queue waits
  (created_at to started_at, the GPU's admission) in t1. The jobs still waiting in lanes
  just before B submits are read, for FIFO's model (bench/fairness_report.py);
- weights: the same workers; keys weighted WEIGHTS submit WEIGHTED_JOBS each, interleaved
  from the same clients (so both keys wait from the start, and the window is long); the
  heavier key's share of the starts made while both had jobs waiting;
- work-conserving: WIDE_WORKERS workers, one key, WIDE_JOBS_PER_WORKER jobs a worker of
  ``loadtest`` (t1 = 0.5 s); jobs/s from the first start to the last end.

The fair mode also runs the flood first on single-job workers (``--concurrency 1``): the
order's own figure, without the jobs a worker holds ahead of a new one. Last, with no
worker (a fake heartbeat makes the APIs accept): SUBMITS sequential submits on each API,
alternating between them request by request, so drift hits both alike; their p50.
"""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.fairness_report import (
    Timing,
    flood_models,
    flood_summary,
    position_errors,
    rows_for,
    share_summary,
    submit_summary,
    throughput_summary,
)
from bench.loader import parse_source
from bench.procs import cpu_s, vm_rss_mb
from bench.report import Row
from bench.stack import (
    SIM_REGISTRY,
    BenchStack,
    FakeHeartbeat,
    bench_queues,
    data_uri,
    sample_png,
    sim_env,
    wait_all,
    write_registry,
)
from easel.dev import stop
from shared.jobs import JobStore
from shared.keys import KeyStore
from shared.models import JobRecord, JobStatus
from shared.registry import load_registry
from worker.celery_app import job_slots

SHORT, LONG = "sim-fair-short", "loadtest"  # bench/configs/simulated.toml: t1 0.05 s, 0.5 s
FLOOD_WORKERS, WIDE_WORKERS = 2, 16
FLOOD_JOBS, FLOOD_VICTIM = 400, 10
WEIGHTED_JOBS, WEIGHTS = 300, (3, 1)
WIDE_JOBS_PER_WORKER = 20
SUBMITS, SUBMIT_WARMUP = 300, 30
SUBMITTERS = 6
PREFIX = "easel.bench.fair"
MODES = {"fair": "true", "fifo": "false"}  # EASEL_FAIR_SHARE
KEY_RATE, KEY_INFLIGHT = "1000000/minute", 100_000  # far above any round: measure the order
KEY_WEIGHTS = {"solo-a": 1, "solo-b": 1, "flood-a": 1, "flood-b": 1, "heavy": WEIGHTS[0],
               "light": WEIGHTS[1], "alone": 1, "submit": 1}  # fmt: skip


@dataclass(frozen=True)
class Key:
    """A stored API key: its owner id (the lane its jobs wait in) and its secret."""

    owner: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


Plan = list[tuple[Key, dict[str, Any]]]


def make_keys(stack: BenchStack, hash_secret: str) -> dict[str, Key]:
    """One stored key per KEY_WEIGHTS entry, as ``easel keys create`` makes them."""
    store = KeyStore(stack.redis, stack.settings_with(EASEL_KEY_HASH_SECRET=hash_secret))
    keys = {}
    for name, weight in KEY_WEIGHTS.items():
        secret, record = store.create(f"bench-{name}", KEY_RATE, KEY_INFLIGHT, weight)
        keys[name] = Key(record.owner, secret)
    return keys


def submit(url: str, plan: Plan) -> dict[str, int | None]:
    """Submit each body with its key, in plan order, from SUBMITTERS clients; the task ids,
    each with the queue position its submit answered."""
    todo: queue.Queue[tuple[Key, dict[str, Any]] | None] = queue.Queue()
    for item in [*plan, *[None] * SUBMITTERS]:
        todo.put(item)
    ids: dict[str, int | None] = {}
    errors: list[str] = []

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while (item := todo.get()) is not None:
                key, body = item
                response = client.post("/getImageToImage", json=body, headers=key.headers)
                if response.status_code == 200:
                    answer = response.json()
                    ids[answer["task_id"]] = answer.get("queue_position")
                else:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} fairness submits failed, first: {errors[0]}")
    return ids


def timings(records: list[JobRecord]) -> list[Timing]:
    """Each record's owner and times; every job must have succeeded."""
    failed = [r for r in records if r.status is not JobStatus.SUCCESS]
    if failed:
        raise RuntimeError(f"{len(failed)} fairness jobs did not succeed: {failed[0].error}")
    return [Timing(r.owner, r.created_at, r.started_at or 0.0, r.finished_at or 0.0, r.task_id)
            for r in records]  # fmt: skip


class Mode:
    """One value of EASEL_FAIR_SHARE: its API, its queue, and the workers it runs now."""

    def __init__(self, stack: BenchStack, name: str, url: str, env: dict[str, str]) -> None:
        self.stack, self.name, self.url, self.env = stack, name, url, env
        self.queue = stack.settings_with(**env).queue_for(stack.settings.worker_gpu)
        fair = env["EASEL_FAIR_SHARE"] == "true"
        self.store = JobStore(stack.redis, stack.settings.job_ttl_s, fair)
        self.image = data_uri(sample_png(64, 64))
        self.workers: list[subprocess.Popen[bytes]] = []

    def plan(self, key: Key, app_id: str, jobs: int) -> Plan:
        """``jobs`` submits of ``app_id`` by ``key``, each with its own seed."""
        return [(key, {"app_id": app_id, "image": self.image, "celery": True, "seed": n,
                       "prompt": f"fair {n}"}) for n in range(jobs)]  # fmt: skip

    def run(self, plan: Plan) -> list[Timing]:
        """Submit a plan and wait for all of its jobs."""
        return timings(wait_all(self.store, list(submit(self.url, plan)), timeout_s=300))

    def add_workers(self, count: int, warm: Key, concurrency: int | None = None) -> None:
        """Start ``count`` more bench workers, wait until they beat, and warm them up (a
        process's first jobs pay its S3 client and threads)."""
        args = ["--gpu", "a10g", "--loglevel", "warning"]
        args += ["--concurrency", str(concurrency)] if concurrency else []
        env = {**sim_env(), **self.stack.env, "EASEL_TORCH_THREADS": "1", **self.env}
        for _ in range(count):
            log = f"worker-fair-{self.name}-{len(self.workers)}.log"
            self.workers.append(self.stack.spawn(args, log, module="bench.worker", **env))
        self.stack.wait_live(self.queue, len(self.workers))
        self.run(self.plan(warm, SHORT, 3 * len(self.workers)))

    def stop_workers(self) -> None:
        stop(*self.workers, grace_s=30)
        self.workers = []

    def flood(self, a: Key, b: Key) -> tuple[list[Timing], int, dict[str, int | None]]:
        """A's FLOOD_JOBS, then B's FLOOD_VICTIM; the timings, how many jobs waited in
        lanes (popped ones not counted) just before B submitted, and B's queue positions."""
        flood = submit(self.url, self.plan(a, SHORT, FLOOD_JOBS))
        ahead = sum(self.store.backlog(self.queue).values())
        victim = submit(self.url, self.plan(b, SHORT, FLOOD_VICTIM))
        records = wait_all(self.store, [*flood, *victim], timeout_s=300)
        return timings(records), ahead, victim

    def weighted(self, heavy: Key, light: Key) -> list[Timing]:
        """Both keys' WEIGHTED_JOBS, interleaved one for one."""
        pairs = zip(self.plan(heavy, SHORT, WEIGHTED_JOBS), self.plan(light, SHORT, WEIGHTED_JOBS),
                    strict=True)  # fmt: skip
        return self.run([item for pair in pairs for item in pair])

    def wide(self, key: Key) -> dict[str, Any]:
        """WIDE_JOBS_PER_WORKER jobs a worker by one key; throughput, and what the workers
        cost this 2-core machine meanwhile (CPU cores used, RSS)."""
        pids = [worker.pid for worker in self.workers]
        cpu_before, began = sum(cpu_s(pid) for pid in pids), time.monotonic()
        found = self.run(self.plan(key, LONG, WIDE_JOBS_PER_WORKER * len(pids)))
        cores = (sum(cpu_s(pid) for pid in pids) - cpu_before) / (time.monotonic() - began)
        return throughput_summary(found) | {
            "workers": len(pids),
            "workers_cores": round(cores, 2),
            "workers_rss_mb": round(sum(vm_rss_mb(pid) for pid in pids)),
            "load_average": os.getloadavg(),
        }


def measure(mode: Mode, keys: dict[str, Key], t1: float, slots: int) -> dict[str, Any]:
    """Every round of one mode; the single-job flood too for the fair one."""

    def flood(a: Key, b: Key, held: int) -> dict[str, Any]:
        found, ahead, positions = mode.flood(a, b)
        summary = flood_summary(found, b.owner, a.owner, t1, FLOOD_WORKERS)
        summary["ahead"] = ahead
        summary["position_errors"] = position_errors(found, positions)
        summary["models"] = flood_models(FLOOD_VICTIM, ahead, b.owner, a.owner, FLOOD_WORKERS,
                                         held)  # fmt: skip
        return summary

    result: dict[str, Any] = {}
    try:
        if mode.name == "fair":
            mode.add_workers(FLOOD_WORKERS, keys["alone"], concurrency=1)
            result["flood_single_job"] = flood(keys["solo-a"], keys["solo-b"], 1)
            mode.stop_workers()
        mode.add_workers(FLOOD_WORKERS, keys["alone"])
        result["flood"] = flood(keys["flood-a"], keys["flood-b"], slots)
        found = mode.weighted(keys["heavy"], keys["light"])
        result["weighted"] = share_summary(found, keys["heavy"].owner, keys["light"].owner)
        mode.add_workers(WIDE_WORKERS - FLOOD_WORKERS, keys["alone"])
        result["wide"] = mode.wide(keys["alone"])
    finally:
        mode.stop_workers()
    return result


def submit_cost(stack: BenchStack, modes: dict[str, Mode], key: Key) -> dict[str, list[float]]:
    """SUBMITS sequential submits on each mode's API, alternating (who goes first too),
    after SUBMIT_WARMUP each; no worker runs, a fake heartbeat makes the APIs accept."""
    queues = [mode.queue for mode in modes.values()]
    latencies: dict[str, list[float]] = {name: [] for name in modes}
    clients = {name: httpx.Client(base_url=mode.url, headers=key.headers, timeout=30)
               for name, mode in modes.items()}  # fmt: skip
    body = modes["fair"].plan(key, SHORT, 1)[0][1]
    heartbeat = FakeHeartbeat(stack.redis, queues, stack.settings.worker_stale_after_s)
    try:
        with heartbeat:
            for n in range(SUBMIT_WARMUP + SUBMITS):
                for name in list(clients) if n % 2 else list(clients)[::-1]:
                    began = time.perf_counter()
                    response = clients[name].post("/getImageToImage", json=body)
                    took = time.perf_counter() - began
                    response.raise_for_status()
                    if n >= SUBMIT_WARMUP:
                        latencies[name].append(took)
    finally:
        for client in clients.values():
            client.close()
    return latencies


def run(stack: BenchStack) -> tuple[list[Row], dict[str, Any]]:
    """Both modes' rounds, then the submit cost; rows for the table."""
    hash_secret = secrets.token_hex(24)
    keys = make_keys(stack, hash_secret)
    sim = load_registry(SIM_REGISTRY)
    registry = write_registry(stack.state / "registry-fairness.toml",
                              {app_id: sim.get(app_id) for app_id in (SHORT, LONG)})  # fmt: skip
    t1 = parse_source(sim.get(SHORT).source).cost.t1
    slots = job_slots(stack.settings, registry)
    envs = {name: {"EASEL_QUEUES": bench_queues(f"{PREFIX}.{name}"), "EASEL_FAIR_SHARE": flag,
                   "EASEL_MODEL_REGISTRY": str(registry), "EASEL_KEY_HASH_SECRET": hash_secret}
            for name, flag in MODES.items()}  # fmt: skip
    results: dict[str, Any] = {}
    with stack.api(**envs["fair"]) as (fair_url, _), stack.api(**envs["fifo"]) as (fifo_url, _):
        modes = {name: Mode(stack, name, url, envs[name])
                 for name, url in (("fair", fair_url), ("fifo", fifo_url))}  # fmt: skip
        for name, mode in modes.items():
            results[name] = measure(mode, keys, t1, slots)
            print(f"  fairness: {name} done", flush=True)
        for name, latencies in submit_cost(stack, modes, keys["submit"]).items():
            results[name]["submit"] = submit_summary(latencies)
    results["config"] = {
        "flood_t1_s": t1, "long_t1_s": parse_source(sim.get(LONG).source).cost.t1,
        "slots": slots, "flood_workers": FLOOD_WORKERS, "wide_workers": WIDE_WORKERS,
        "flood_jobs": FLOOD_JOBS, "flood_victim": FLOOD_VICTIM, "weights": list(WEIGHTS),
        "weighted_jobs": WEIGHTED_JOBS, "submits": SUBMITS,
    }  # fmt: skip
    return rows_for(results)
