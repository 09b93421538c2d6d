"""The worker's metrics: each ended job's counts and timings, jobs in flight, the size of
each pipeline call and the GPU's idle gaps between calls, GPU memory, and ``/metrics`` on
``EASEL_METRICS_PORT`` (off by default; 9100 on Kubernetes).

Jobs run on threads of one process (Celery's threads pool), several at once, and one GPU
thread (worker/batcher.py) runs pipeline calls that hold the images of one or more of
them; there are no prefork children, so ``easel_worker_inflight`` counts up and down
rather than being set. With a port set, ``init_worker_metrics`` still gives this
``easel worker`` a multiprocess directory of its own, as the API has one: the process
writes its values there and its HTTP server reads them back on each scrape, and any
process forked from it would be summed in the same way.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import signals
from prometheus_client import start_http_server

from shared.metrics import (
    BATCH_IMAGES,
    BATCH_JOBS,
    END_TO_END,
    GPU_IDLE,
    GPU_MEMORY,
    INFERENCE,
    JOBS,
    MODEL_LOAD,
    QUEUE_WAIT,
    UPLOAD,
    WORKER_INFLIGHT,
    remove_multiprocess_dir,
    scrape_registry,
    use_multiprocess_dir,
)
from shared.models import JobRecord, JobState
from shared.settings import Settings

log = logging.getLogger(__name__)


def observe_job(record: JobRecord) -> None:
    """Count a job this worker ended, and observe the time each of its steps took.

    Queue wait counts for every job a worker took; the step timings and end to end only
    for successful jobs, where every step ran (a failed job's zeros would pull them down).
    """
    if not record.status.is_terminal:
        return
    labels = (record.app_id, record.inference_type.value)
    JOBS.labels(record.state.value, *labels).inc()
    timings = record.time_required
    if timings.queue is not None:
        QUEUE_WAIT.labels(*labels).observe(timings.queue)
    if record.state is not JobState.SUCCEEDED:
        return
    for histogram, seconds in (
        (MODEL_LOAD, timings.load),
        (INFERENCE, timings.inference),
        (UPLOAD, timings.upload),
        (END_TO_END, timings.total),
    ):
        if seconds is not None:
            histogram.labels(*labels).observe(seconds)


def observe_batch(app_id: str, inference_type: str, images: int, jobs: int) -> None:
    """Observe one pipeline call: the images it made and the jobs they belong to."""
    BATCH_IMAGES.labels(app_id, inference_type).observe(images)
    BATCH_JOBS.labels(app_id, inference_type).observe(jobs)


def observe_gpu_idle(inference_type: str, seconds: float) -> None:
    """Observe the GPU's wait between two pipeline calls while a job was already waiting."""
    GPU_IDLE.labels(inference_type).observe(seconds)


@contextmanager
def job_in_flight(worker: str) -> Iterator[None]:
    """Count a job in ``easel_worker_inflight{worker}`` while it runs; sample GPU memory."""
    gauge = WORKER_INFLIGHT.labels(worker)
    gauge.inc()  # not set(1): the pool's other threads run jobs of their own meanwhile
    try:
        yield
    finally:
        gauge.dec()
        sample_gpu_memory()


def sample_gpu_memory() -> None:
    """Record ``torch.cuda.memory_allocated`` per device, where this process uses CUDA."""
    torch = sys.modules.get("torch")  # never import torch (or start CUDA) just for this
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        GPU_MEMORY.labels(f"cuda:{index}").set(torch.cuda.memory_allocated(index))


def init_worker_metrics(settings: Settings) -> None:
    """With ``metrics_port`` set: a multiprocess directory, served once the worker is ready."""
    port = settings.metrics_port
    if port is None:
        return
    path = use_multiprocess_dir("worker")

    def serve(**_: Any) -> None:
        start_http_server(port, registry=scrape_registry())
        log.info("metrics on port %d", port)

    signals.worker_ready.connect(serve, weak=False)
    signals.worker_shutdown.connect(lambda **_: remove_multiprocess_dir(path), weak=False)
