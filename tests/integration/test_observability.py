"""Metrics and logs on the real stack: one job traced by its task id through JSON log lines,
and /metrics summing every gunicorn and Celery pool process.

The session's workers log at ``warning``, so this module starts its own pair on queues of
its own: a worker at ``info`` with ``EASEL_METRICS_PORT`` set, and an API under gunicorn
with two workers, exactly as ``easel worker`` and ``easel api`` run them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from easel.dev import stop
from easel.stack import free_port, wait_until
from shared.jobs import WorkerLiveness, connect_redis
from shared.models import InferenceType
from tests.conftest import API_KEY, data_uri, png_bytes, settings_from, spawn

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(4)
QUEUES = {kind.value: f"obs-{TOKEN}.{kind.value}" for kind in InferenceType}
LABELS = {"app_id": "tiny-sd", "inference_type": "a10g"}


@dataclass
class Stack:
    api: subprocess.Popen[bytes]
    api_url: str
    api_log: Path
    worker_metrics_url: str
    worker_log: Path


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Stack]:
    """A worker with a metrics port and an API, on queues no other test uses."""
    from worker.tiny_models import ensure_tiny_model

    metrics_port, api_port = free_port(), free_port()
    env = {**stack_env, "EASEL_QUEUES": json.dumps(QUEUES)}
    settings = settings_from(env)
    ensure_tiny_model("tiny-sd", settings.model_dir)
    worker_log, api_log = logs_dir / "worker-observed.log", logs_dir / "api-observed.log"
    worker = spawn(
        ["worker", "--gpu", "a10g", "--loglevel", "info"],
        {**env, "EASEL_METRICS_PORT": str(metrics_port)},
        worker_log,
    )
    api = spawn(["api", "--bind", f"127.0.0.1:{api_port}", "--workers", "2"], env, api_log)
    api_url = f"http://127.0.0.1:{api_port}"
    liveness = WorkerLiveness(connect_redis(settings), settings.worker_stale_after_s)
    try:

        def ready() -> None:
            assert worker.poll() is None and api.poll() is None, "see the -observed logs"
            assert liveness.live(settings.queue_for(InferenceType.A10G)), "worker not warm"
            httpx.get(f"{api_url}/ready", timeout=2).raise_for_status()
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).raise_for_status()

        wait_until(ready, 120, "the observed worker and API")
        yield Stack(api, api_url, api_log, f"http://127.0.0.1:{metrics_port}/metrics", worker_log)
    finally:
        stop(api)
        stop(worker)
        redis = connect_redis(settings)
        doomed = list(redis.scan_iter(match=f"*obs-{TOKEN}.*"))
        if doomed:
            redis.delete(*doomed)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(url: str, name: str, **labels: str) -> float:
    return scrape(url).get((name, frozenset(labels.items())), 0.0)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The log's JSON lines; AssertionError naming one that starts like JSON but is not.

    Text lines remain from what writes to stderr around logging: Celery's startup banner,
    and libraries with handlers of their own (transformers' warnings).
    """
    parsed = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"{path.name}: a broken JSON line: {line!r}") from None
    return parsed


@pytest.fixture(scope="module")
def job(stack: Stack) -> dict[str, Any]:
    """One job, submitted and waited for through the observed API."""
    with httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=90
    ) as client:
        body = {"app_id": "tiny-sd", "image": data_uri(png_bytes()), "celery": False}
        envelope: dict[str, Any] = client.post("/getImageToImage", json=body).json()
        if envelope["status"] == "PENDING":
            envelope = client.get(f"/tasks/{envelope['task_id']}", params={"wait": 60}).json()
    assert envelope["status"] == "SUCCESS", envelope
    return envelope


def test_the_worker_endpoint_counts_the_job_and_its_steps(stack: Stack, job: Any) -> None:
    def counted() -> None:
        samples = scrape(stack.worker_metrics_url)
        key = ("easel_jobs_total", frozenset({**LABELS, "state": "succeeded"}.items()))
        assert samples.get(key) == 1

    wait_until(counted, 10, "the worker's job count")  # observed just after the final write
    samples = scrape(stack.worker_metrics_url)
    for step in ("queue_wait", "model_load", "inference", "upload", "end_to_end"):
        assert samples[(f"easel_{step}_seconds_count", frozenset(LABELS.items()))] == 1
    inflight = [v for (name, _), v in samples.items() if name == "easel_worker_inflight"]
    assert inflight and sum(inflight) == 0  # the job ran and ended


def test_the_api_endpoint_counts_the_job_queued_and_reads_queue_depth(
    stack: Stack, job: Any
) -> None:
    url = f"{stack.api_url}/metrics"
    assert value(url, "easel_jobs_total", state="queued", **LABELS) == 1
    assert value(url, "easel_queue_depth", inference_type="a10g") == 0
    assert ("easel_queue_depth", frozenset({("inference_type", "h100")})) in scrape(url)


def test_the_api_sums_request_counts_across_its_gunicorn_workers(stack: Stack) -> None:
    url = f"{stack.api_url}/metrics"
    health = {"method": "GET", "endpoint": "/health", "status": "200"}
    before = value(url, "easel_http_requests_total", **health)
    environ = Path(f"/proc/{stack.api.pid}/environ").read_bytes().split(b"\0")
    (directory,) = [Path(v.split(b"=", 1)[1].decode()) for v in environ if v.startswith(b"PROM")]

    def writers() -> set[str]:
        return {path.stem.rpartition("_")[2] for path in directory.glob("counter_*.db")}

    sent = 0
    while sent < 200 and (sent < 20 or len(writers()) < 2):
        httpx.get(f"{stack.api_url}/health", timeout=5).raise_for_status()  # a new connection
        sent += 1
    assert len(writers()) == 2, "both gunicorn workers served requests"
    for _ in range(3):  # whichever worker answers the scrape, it sums both
        assert value(url, "easel_http_requests_total", **health) - before == sent


def test_one_task_id_runs_through_the_json_lines_of_the_api_and_the_worker(
    stack: Stack, job: Any
) -> None:
    task_id = job["task_id"]
    api_lines = json_lines(stack.api_log)
    worker_lines = json_lines(stack.worker_log)
    submit = [r for r in api_lines if r["task_id"] == task_id and r["logger"] == "api.access"]
    assert submit and submit[0]["method"] == "POST" and submit[0]["status"] == 200
    assert {"time", "level", "logger", "message", "service"} <= submit[0].keys()
    assert any(r["logger"].startswith("gunicorn") for r in api_lines)  # gunicorn's own, as JSON
    traced = [r for r in worker_lines if r["task_id"] == task_id]
    assert traced, "no worker line carries the task id"
    assert {r["service"] for r in traced} == {"worker"}
    # Its turn's Celery lines carry the turn's id; the job's own lines carry the job's.
    assert any("next in fair order" in r["message"] for r in traced)
    assert any(f"job {task_id} succeeded" in r["message"] for r in traced)
    assert "a beautiful painting" not in stack.worker_log.read_text()  # no task arguments
