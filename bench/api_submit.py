"""Section 1: the API's submit path under gunicorn, against a trivial endpoint of the same app.

2000 ``celery: true`` tiny-sd submits with a small data-URI PNG, from 8 keep-alive clients
(one thread and one ``httpx.Client`` each), against ``easel api``'s default config (gevent,
2 workers). The baseline is ``GET /health`` (no I/O) on the same server, with
the same clients, in the same run. The API is pointed at bench-only queues that no worker
consumes; a fake heartbeat makes it accept, and the queues are deleted afterwards.

The RSS of an API worker stands next to a bare Flask app (bench/bare_app.py, one constant
route) under the same ``python -m gunicorn`` command, config included, after the same
clients' warm-up and 2000 requests; and once more without ``api.gunicorn_conf``, whose
imports (pydantic, Easel's settings and models, prometheus_client) every worker inherits
from gunicorn's master.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.procs import children, cpu_s, maps_torch, vm_rss_mb
from bench.report import Row, median, ms, percentile
from bench.stack import ROOT, BenchStack, FakeHeartbeat, bench_queues, data_uri, sample_png
from easel.dev import stop
from easel.stack import free_port, wait_until
from shared.metrics import MULTIPROC_ENV

REQUESTS = 2000
CLIENTS = 8
WARMUP = 100
PREFIX = "easel.bench.submit"
RATIO_TARGET, P99_TARGET_S, RSS_TARGET_MB = 0.5, 0.025, 80.0
CONFIG = "python:api.gunicorn_conf"
BARE_APP = "bench.bare_app:create_app()"

Call = Callable[[httpx.Client], httpx.Response]


def drive(url: str, headers: dict[str, str], call: Call, total: int) -> dict[str, Any]:
    """Run ``total`` calls from CLIENTS keep-alive clients; throughput and latencies."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    per_client = [total // CLIENTS + (1 if i < total % CLIENTS else 0) for i in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS + 1)

    def client_loop(count: int) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            call(client).raise_for_status()  # open the keep-alive connection first
            barrier.wait()
            for _ in range(count):
                started = time.perf_counter()
                response = call(client)
                mine.append(time.perf_counter() - started)
                if response.status_code >= 300:
                    with lock:
                        errors.append(f"{response.status_code} {response.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in per_client]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return {
        "requests": total,
        "wall_s": round(wall, 3),
        "throughput_rps": round(total / wall, 1),
        "p50_s": round(median(latencies), 5),
        "p99_s": round(percentile(latencies, 99), 5),
        "max_s": round(max(latencies), 5),
    }


def gunicorn_argv(bind: str, app: str, config: bool = True) -> list[str]:
    """The gunicorn command of ``easel api`` with its defaults (easel/cli.py), serving ``app``."""
    argv = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", "2",
            "--worker-class", "gevent", "--worker-connections", "2000",
            "--timeout", "120"]  # fmt: skip
    return argv + (["--config", CONFIG] if config else []) + [app]


def bare_flask_rss(stack: BenchStack, config: bool) -> dict[str, Any]:
    """RSS of bench/bare_app.py's gunicorn workers after the load the API's health got."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **stack.env}
    if config:  # as run_api does: the config's metrics hooks look for it
        metrics_dir = stack.state / f"bare-metrics-{port}"
        metrics_dir.mkdir()
        env[MULTIPROC_ENV] = str(metrics_dir)
    argv = gunicorn_argv(f"127.0.0.1:{port}", BARE_APP, config)
    with open(stack.logs / f"bare-{port}.log", "ab") as log:
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: httpx.get(url, timeout=2).raise_for_status(), 60, "bare Flask")
        drive(url, {}, lambda client: client.get("/"), WARMUP)
        load = drive(url, {}, lambda client: client.get("/"), REQUESTS)
        rss = {pid: round(vm_rss_mb(pid), 1) for pid in children(process.pid)}
    finally:
        stop(process)
    return {"config": config, "get": load, "rss_mb": rss}


def run(stack: BenchStack) -> tuple[list[Row], dict[str, Any]]:
    """Measure the submit path; rows for the table and the raw figures."""
    settings = stack.settings_with(EASEL_QUEUES=bench_queues(PREFIX))
    queues = list(settings.queues.values())
    body = {"app_id": "tiny-sd", "image": data_uri(sample_png(64, 64)), "celery": True}

    def health(client: httpx.Client) -> httpx.Response:
        return client.get("/health")

    def submit(client: httpx.Client) -> httpx.Response:
        return client.post("/getImageToImage", json=body)

    heartbeat = FakeHeartbeat(stack.redis, queues, settings.worker_stale_after_s)
    redis_pid = stack.redis_server.process.pid
    with stack.api(EASEL_QUEUES=bench_queues(PREFIX)) as (url, process), heartbeat:
        drive(url, stack.headers, health, WARMUP)
        drive(url, stack.headers, submit, WARMUP)
        baseline = drive(url, stack.headers, health, REQUESTS)
        before = cpu_s(redis_pid)
        submits = drive(url, stack.headers, submit, REQUESTS)
        submits["redis_cpu_ms_per_request"] = round((cpu_s(redis_pid) - before) / REQUESTS * 1e3, 4)
        with httpx.Client(base_url=url, headers=stack.headers) as one:
            task = f"/tasks/{submit(one).json()['task_id']}"
        before = cpu_s(redis_pid)
        reads = drive(url, stack.headers, lambda client: client.get(task), REQUESTS)
        reads["redis_cpu_ms_per_request"] = round((cpu_s(redis_pid) - before) / REQUESTS * 1e3, 4)
        workers = children(process.pid)  # gunicorn's workers under its master
        rss = {pid: round(vm_rss_mb(pid), 1) for pid in workers}
        torch_mapped = {pid: maps_torch(pid) for pid in workers}
    bare = [bare_flask_rss(stack, config=True), bare_flask_rss(stack, config=False)]
    bare_rss = [max(each["rss_mb"].values()) for each in bare]
    queued = sum(int(stack.redis.llen(queue)) for queue in queues)
    for queue in queues:  # nothing will ever consume these
        stack.redis.delete(queue, f"easel:queued:{queue}")
    ratio = submits["throughput_rps"] / baseline["throughput_rps"]
    worst_rss = max(rss.values())
    details = {"health": baseline, "submit": submits, "status_read_queued": reads, "rss_mb": rss,
               "torch_mapped": torch_mapped, "messages_queued": queued,
               "bare_flask": bare}  # fmt: skip
    section = "1 API submit"
    rows = [
        Row(section, "submit throughput (8 keep-alive clients)",
            f"{submits['throughput_rps']:.0f} req/s",
            f"GET /health {baseline['throughput_rps']:.0f} req/s", "", None),
        Row(section, "submit / health throughput ratio", f"{ratio:.2f}", "1.00 (health)",
            f">= {RATIO_TARGET}", ratio >= RATIO_TARGET),
        Row(section, "submit p50", ms(submits["p50_s"]), f"health {ms(baseline['p50_s'])}"),
        Row(section, "submit p99", ms(submits["p99_s"]), f"health {ms(baseline['p99_s'])}",
            f"<= {P99_TARGET_S * 1000:.0f} ms", submits["p99_s"] <= P99_TARGET_S),
        Row(section, "GET /tasks/<id> of a queued job (8 clients)",
            f"{reads['throughput_rps']:.0f} req/s, p99 {ms(reads['p99_s'])}",
            f"GET /health {baseline['throughput_rps']:.0f} req/s"),
        Row(section, "RSS of one API worker (max of 2)", f"{worst_rss:.1f} MB",
            f"bare Flask under the same gunicorn {bare_rss[0]:.1f} MB "
            f"({bare_rss[1]:.1f} MB without api.gunicorn_conf)",
            f"<= {RSS_TARGET_MB:.0f} MB", worst_rss <= RSS_TARGET_MB),
        Row(section, "torch mapped in API workers (/proc/pid/maps)",
            "no" if not any(torch_mapped.values()) else "YES", "", "no",
            not any(torch_mapped.values())),
    ]  # fmt: skip
    return rows, details
