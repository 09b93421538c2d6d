"""The worker's metrics: each ended job's counts and timings, jobs in flight, GPU memory,
and ``/metrics`` on ``EASEL_METRICS_PORT`` (off by default; 9100 on Kubernetes).

Jobs run in Celery's prefork children while the main process only takes messages. With a
port set, ``init_worker_metrics`` gives this ``easel worker`` its own multiprocess
directory before the pool forks; the children write their values there, and an HTTP
server in the main process sums every child's files on each scrape. So one port per
worker, however many children it has, and a restarted child's counts are kept.
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
    END_TO_END,
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


@contextmanager
def job_in_flight(worker: str) -> Iterator[None]:
    """Hold ``easel_worker_inflight{worker}`` at 1 while a job runs; sample GPU memory."""
    gauge = WORKER_INFLIGHT.labels(worker)
    gauge.set(1)
    try:
        yield
    finally:
        gauge.set(0)
        sample_gpu_memory()


def sample_gpu_memory() -> None:
    """Record ``torch.cuda.memory_allocated`` per device, where this process uses CUDA."""
    torch = sys.modules.get("torch")  # never import torch (or start CUDA) just for this
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        GPU_MEMORY.labels(f"cuda:{index}").set(torch.cuda.memory_allocated(index))


def init_worker_metrics(settings: Settings) -> None:
    """With ``metrics_port`` set: share metrics across the pool, and serve them once it runs."""
    port = settings.metrics_port
    if port is None:
        return
    path = use_multiprocess_dir("worker")

    def serve(**_: Any) -> None:
        start_http_server(port, registry=scrape_registry())
        log.info("metrics on port %d", port)

    signals.worker_ready.connect(serve, weak=False)
    signals.worker_shutdown.connect(lambda **_: remove_multiprocess_dir(path), weak=False)
