"""The worker's metrics: an ended job's counts and timings, in-flight jobs on the pool's
threads, the size of each pipeline call and the GPU's idle gaps, and one endpoint that sums
every process writing to a worker's metrics directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from easel.stack import free_port
from shared.models import JobRecord, JobState, TimeRequired
from tests.conftest import job_record
from worker.metrics import (
    GPU_MEMORY,
    job_in_flight,
    observe_batch,
    observe_gpu_idle,
    observe_job,
    sample_gpu_memory,
)

LABELS = {"app_id": "tiny-sd", "inference_type": "a10g"}
STEPS = ("queue_wait", "model_load", "inference", "upload", "end_to_end")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    """The counts and sums observe_job touches, for the test job's labels."""
    values: dict[str, float] = {
        state.value: sample("easel_jobs_total", state=state, **LABELS) for state in JobState
    }
    for step in STEPS:
        values[f"{step}_count"] = sample(f"easel_{step}_seconds_count", **LABELS)
        values[f"{step}_sum"] = sample(f"easel_{step}_seconds_sum", **LABELS)
    return values


def ended(state: JobState, **timings: float) -> JobRecord:
    record = job_record(str(uuid.uuid4()))
    record.state = state
    record.time_required = TimeRequired(**timings)
    return record


def test_a_successful_job_counts_once_and_observes_every_step() -> None:
    before = snapshot()
    observe_job(
        ended(JobState.SUCCEEDED, queue=0.5, load=2.0, inference=3.0, upload=0.25, total=5.75)
    )
    after = snapshot()
    delta = {name: after[name] - before[name] for name in after}
    assert delta[JobState.SUCCEEDED] == 1
    assert delta[JobState.FAILED] == delta[JobState.QUEUED] == 0
    assert all(delta[f"{step}_count"] == 1 for step in STEPS)
    sums = [delta[f"{step}_sum"] for step in STEPS]
    assert sums == pytest.approx([0.5, 2.0, 3.0, 0.25, 5.75])  # differences of float sums
    assert sample("easel_inference_seconds_bucket", le="5.0", **LABELS) >= 1


def test_a_failed_job_counts_and_observes_only_its_queue_wait() -> None:
    before = snapshot()
    observe_job(ended(JobState.FAILED, queue=1.5, load=0.0, total=1.6))
    observe_job(ended(JobState.CANCELED, queue=0.1, total=0.2))
    after = snapshot()
    assert after[JobState.FAILED] - before[JobState.FAILED] == 1
    assert after[JobState.CANCELED] - before[JobState.CANCELED] == 1
    assert after["queue_wait_count"] - before["queue_wait_count"] == 2
    for step in STEPS[1:]:
        assert after[f"{step}_count"] == before[f"{step}_count"]


def test_a_job_that_has_not_ended_is_not_counted() -> None:
    before = snapshot()
    observe_job(ended(JobState.RUNNING, queue=0.3))
    assert snapshot() == before


def test_in_flight_is_one_while_the_job_runs_and_zero_after_even_if_it_raises() -> None:
    worker = f"test-{uuid.uuid4().hex[:6]}@host/1"
    try:
        with job_in_flight(worker):
            assert sample("easel_worker_inflight", worker=worker) == 1
            raise RuntimeError("the job blew up")
    except RuntimeError:
        pass
    assert sample("easel_worker_inflight", worker=worker) == 0


def test_in_flight_counts_two_overlapping_jobs_on_pool_threads_and_returns_to_zero() -> None:
    worker = f"test-{uuid.uuid4().hex[:6]}@host/1"
    both_in, first_out = threading.Barrier(3), threading.Event()
    second_out = threading.Event()

    def job(leave: threading.Event) -> None:
        with job_in_flight(worker):
            both_in.wait(timeout=5)
            assert leave.wait(timeout=5)

    threads = [threading.Thread(target=job, args=(e,)) for e in (first_out, second_out)]
    for thread in threads:
        thread.start()
    both_in.wait(timeout=5)
    seen = [sample("easel_worker_inflight", worker=worker)]
    first_out.set()
    threads[0].join(timeout=5)
    seen.append(sample("easel_worker_inflight", worker=worker))
    second_out.set()
    threads[1].join(timeout=5)
    seen.append(sample("easel_worker_inflight", worker=worker))
    assert seen == [2, 1, 0]


def histogram_samples(name: str, labels: dict[str, str], bounds: tuple[str, ...]) -> list[float]:
    """A histogram's count, sum and the given buckets' counts, for one label set."""
    return [
        sample(f"{name}_count", **labels),
        sample(f"{name}_sum", **labels),
        *(sample(f"{name}_bucket", le=le, **labels) for le in bounds),
    ]


def minus(after: list[float], before: list[float]) -> list[float]:
    return [a - b for a, b in zip(after, before, strict=True)]


def test_a_pipeline_call_observes_its_images_and_its_jobs() -> None:
    bounds = ("2.0", "3.0", "4.0", "6.0", "64.0")
    names = ("easel_batch_images", "easel_batch_jobs")
    before = [histogram_samples(name, LABELS, bounds) for name in names]
    observe_batch("tiny-sd", "a10g", images=5, jobs=3)  # a batch-3 job with two batch-1 ones
    observe_batch("tiny-sd", "a10g", images=1, jobs=1)  # a lone job
    after = [histogram_samples(name, LABELS, bounds) for name in names]
    deltas = [minus(x, y) for x, y in zip(after, before, strict=True)]
    # count, sum, then le=2, 3, 4, 6, 64 (cumulative)
    assert deltas[0] == [2, 6, 1, 1, 1, 2, 2]
    assert deltas[1] == [2, 4, 1, 2, 2, 2, 2]


def test_gpu_idle_gaps_land_in_millisecond_buckets_per_gpu_class() -> None:
    labels = {"inference_type": "h100"}
    bounds = ("0.001", "0.005", "0.05", "1.0", "+Inf")
    before = histogram_samples("easel_gpu_idle_seconds", labels, bounds)
    for seconds in (0.0004, 0.003, 0.04, 2.0):
        observe_gpu_idle("h100", seconds)
    after = histogram_samples("easel_gpu_idle_seconds", labels, bounds)
    delta = minus(after, before)
    assert delta[0] == 4 and delta[1] == pytest.approx(2.0434)
    assert delta[2:] == [1, 2, 3, 3, 4]


def test_gpu_memory_is_absent_where_the_process_never_used_cuda() -> None:
    import torch

    sample_gpu_memory()
    if not torch.cuda.is_initialized():
        assert REGISTRY.get_sample_value("easel_gpu_memory_bytes", {"device": "cuda:0"}) is None


def test_gpu_memory_is_sampled_per_device_where_cuda_is_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: (index + 1) * 2**30)
    try:
        sample_gpu_memory()
        for index in (0, 1):
            value = REGISTRY.get_sample_value("easel_gpu_memory_bytes", {"device": f"cuda:{index}"})
            assert value == (index + 1) * 2**30
    finally:  # this process has no GPU: leave no make-believe device behind
        for index in (0, 1):
            GPU_MEMORY.remove(f"cuda:{index}")


POOL = textwrap.dedent(
    """
    import os, sys
    from celery import signals
    from shared.settings import Settings
    from tests.conftest import job_record
    from shared.models import JobState, TimeRequired
    from worker.metrics import (
        init_worker_metrics, job_in_flight, observe_batch, observe_gpu_idle, observe_job,
    )

    init_worker_metrics(Settings(metrics_port=int(sys.argv[1])))
    signals.worker_ready.send(sender=None)  # the main process serves, as under Celery
    observe_batch("tiny-sd", "a10g", images=4, jobs=2)  # the serving process's own GPU thread
    observe_gpu_idle("a10g", 0.003)

    def child(index, crash):
        record = job_record(f"job-{index}")
        record.state = JobState.SUCCEEDED
        record.time_required = TimeRequired(queue=1, load=0, inference=2, upload=0, total=3)
        with job_in_flight(f"w@host/{os.getpid()}"):
            if crash:
                os._exit(1)  # killed mid-job: no cleanup runs
        observe_job(record)

    for index, crash in enumerate([False, False, True]):
        pid = os.fork()
        if pid == 0:
            child(index, crash)
            os._exit(0)
        os.waitpid(pid, 0)
    print("ready", flush=True)
    sys.stdin.read()  # until the test is done scraping
    """
)


def test_one_endpoint_sums_the_pool_processes_and_forgets_a_killed_one() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", POOL, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        process.communicate("", timeout=30)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = tuple(sorted({**LABELS}.items()))
    assert (
        samples[("easel_jobs_total", tuple(sorted({**LABELS, "state": "succeeded"}.items())))] == 2
    )
    assert samples[("easel_inference_seconds_count", labels)] == 2
    assert samples[("easel_end_to_end_seconds_sum", labels)] == 6
    assert samples[("easel_batch_images_sum", labels)] == 4
    assert samples[("easel_batch_jobs_sum", labels)] == 2
    assert samples[("easel_gpu_idle_seconds_count", (("inference_type", "a10g"),))] == 1
    inflight = [v for (name, _), v in samples.items() if name == "easel_worker_inflight"]
    assert sum(inflight) == 0  # the killed child's 1 was reaped with its process
