"""Easel's Prometheus metrics, defined once so the API and the workers share their names.

The names and labels are a contract: ``deploy/grafana/easel-dashboard.json`` reads them and
``tests/deploy/test_k8s.py`` pins them.

gunicorn forks API workers, so the API runs several processes; a worker runs its jobs on
threads of one process (Celery's threads pool, for cross-request batching). The same
machinery serves both: in prometheus_client's multiprocess mode each process writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` and the scrape sums the files, which for a
worker are the one process's. ``use_multiprocess_dir`` gives ``easel api`` and each
``easel worker`` a fresh directory of their own before they fork; without one (the Flask
test client, a bare ``celery -A worker.app``) the metrics live in this process's default
registry.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
JOB_LABELS = ("app_id", "inference_type")
# From a cached model (milliseconds) to a cold SDXL load or a long queue (many minutes).
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Images or jobs per pipeline call: every size up to 4 (a job's own batch), then coarser up
# to ModelSpec.max_batch's ceiling of 64.
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# The GPU's wait between calls: the goal is 5 ms or less, unbatched it was about 40 ms.
IDLE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)

JOBS = Counter(
    "easel_jobs_total",
    "Jobs by state: queued when accepted; succeeded, failed or canceled when they end.",
    ["state", *JOB_LABELS],
)


def _job_histogram(name: str, documentation: str) -> Histogram:
    return Histogram(name, documentation, JOB_LABELS, buckets=JOB_BUCKETS)


QUEUE_WAIT = _job_histogram("easel_queue_wait_seconds", "From submit to a worker starting the job.")
MODEL_LOAD = _job_histogram(
    "easel_model_load_seconds", "Loading the pipeline (0 when cached), successful jobs."
)
INFERENCE = _job_histogram("easel_inference_seconds", "The batched pipeline call, successful jobs.")
UPLOAD = _job_histogram("easel_upload_seconds", "Uploading images and previews, successful jobs.")
END_TO_END = _job_histogram(
    "easel_end_to_end_seconds", "From submit to the result recorded, successful jobs."
)
BATCH_IMAGES = Histogram(
    "easel_batch_images", "Images per pipeline call, all of its jobs' together.", JOB_LABELS,
    buckets=BATCH_BUCKETS,
)  # fmt: skip
BATCH_JOBS = Histogram(
    "easel_batch_jobs", "Jobs sharing one pipeline call.", JOB_LABELS, buckets=BATCH_BUCKETS
)
GPU_IDLE = Histogram(
    "easel_gpu_idle_seconds",
    "From one pipeline call's end to the next one's start, while a job was waiting.",
    ["inference_type"],
    buckets=IDLE_BUCKETS,
)
QUEUE_DEPTH = "easel_queue_depth"  # computed at scrape time by the API (api/metrics.py)
# Jobs waiting in each API key's lane, by key id (never its name), computed at scrape time:
# the BACKLOG_KEYS largest per GPU class, and the rest summed as key="other".
QUEUE_BACKLOG = "easel_queue_backlog"
BACKLOG_KEYS = 10
# livesum: a killed worker's jobs drop out of the sum with its process.
WORKER_INFLIGHT = Gauge(
    "easel_worker_inflight", "Jobs running now in this worker process.", ["worker"],
    multiprocess_mode="livesum",
)  # fmt: skip
GPU_MEMORY = Gauge(
    "easel_gpu_memory_bytes", "torch.cuda.memory_allocated, summed over a worker's processes.",
    ["device"], multiprocess_mode="livesum",
)  # fmt: skip
HTTP_REQUESTS = Counter(
    "easel_http_requests_total", "API answers by route and status.",
    ["method", "endpoint", "status"],
)  # fmt: skip
HTTP_SECONDS = Histogram(
    "easel_http_request_seconds", "API request latency by route.", ["method", "endpoint"],
    buckets=HTTP_BUCKETS,
)  # fmt: skip

_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def use_multiprocess_dir(service: str) -> Path:
    """Give this process, and the processes it forks later, a fresh multiprocess directory."""
    path = Path(tempfile.mkdtemp(prefix=f"easel-{service}-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client picks where values live when it is imported, which may have been
    # before this call; pick again. Every metric above has labels, so none holds a value yet.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def multiprocess_dir() -> Path | None:
    """The multiprocess directory of this process, if it has one."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def remove_multiprocess_dir(path: Path) -> None:
    """Delete a directory made by ``use_multiprocess_dir`` once its processes are gone."""
    shutil.rmtree(path, ignore_errors=True)


def reap_dead_processes(path: Path) -> None:
    """Drop the live gauges of processes that died without saying so (killed, crashed)."""
    for entry in path.iterdir():
        match = _LIVE_FILE.match(entry.name)
        if match and not _alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), str(path))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Forward(Collector):
    """Everything in another registry, so a scrape can add collectors of its own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class _ProcessFiles(Collector):
    """The sum of every process's metric files, read afresh on each scrape."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        reap_dead_processes(self.path)
        metrics: Iterable[Metric] = self.files.collect()  # type: ignore[no-untyped-call]
        return metrics


def scrape_registry(*extra: Collector) -> CollectorRegistry:
    """What a scrape serves: every process's files (or this process's registry), plus extras."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    registry.register(_Forward(REGISTRY) if path is None else _ProcessFiles(path))
    for collector in extra:
        registry.register(collector)
    return registry
