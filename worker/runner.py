"""One job, top to bottom: the plain functions a Celery task calls.

1. Load the job record; skip it if it already ended (a redelivery).
2. Mark it running.
3. Get the input image (inline from Redis, or fetched by URL) and fit it.
4. Get the pipeline from the per-process cache.
5. Run one batched pipeline call, one seed per image.
6. Upload each image under a key derived from the task id.
7. Record the result, or the one-line reason it failed.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field

from shared.errors import JobError, UnknownTask
from shared.jobs import JobStore
from shared.models import GenerationParams, JobRecord, JobState, Output
from shared.registry import Registry
from shared.settings import Settings
from shared.storage import Storage
from worker.images import encode_png, fetch_image, prepare_image
from worker.pipelines import PipelineCache, run_img2img

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a worker process keeps between jobs."""

    settings: Settings
    registry: Registry
    jobs: JobStore
    storage: Storage
    pipelines: PipelineCache
    name: str = field(default="worker")


def run_job(ctx: WorkerContext, task_id: str, params: GenerationParams) -> JobRecord | None:
    """Run one job to a terminal state; None when there is nothing (left) to do."""
    try:
        record = ctx.jobs.get(task_id)
    except UnknownTask:
        log.warning("job %s has no record (expired?); dropping it", task_id)
        return None
    if record.status.is_terminal:
        log.info("job %s already ended as %s; not running it again", task_id, record.status)
        return None
    started = time.time()
    record.state = JobState.RUNNING
    record.started_at = started
    record.attempts += 1
    record.worker, record.worker_gpu = ctx.name, ctx.settings.worker_gpu
    record.time_required.queue = round(started - record.created_at, 4)
    ctx.jobs.save(record)
    try:
        generate(ctx, record, params)
    except JobError as exc:
        fail(record, str(exc))
    except Exception as exc:
        log.exception("job %s failed unexpectedly", task_id)
        fail(record, f"internal error: {type(exc).__name__}: {exc}")
    record.finished_at = time.time()
    record.time_required.total = round(record.finished_at - record.created_at, 4)
    ctx.jobs.finish(record)
    return record


def fail(record: JobRecord, reason: str) -> None:
    """End a job as FAILED with a one-line reason."""
    record.state = JobState.FAILED
    record.error = " ".join(reason.split())[:500]


def generate(ctx: WorkerContext, record: JobRecord, params: GenerationParams) -> None:
    """Steps 3 to 7 for a running job; raises JobError on bad input or a model failure."""
    spec = ctx.registry.get(params.app_id)
    timings = record.time_required

    data = ctx.jobs.input_image(record.task_id) if params.image_url is None else None
    if data is None:
        if params.image_url is None:
            raise JobError("image: the inline image expired before the job ran")
        settings = ctx.settings
        data = fetch_image(
            params.image_url, settings.image_max_bytes, settings.image_fetch_timeout_s
        )
    image = prepare_image(data, spec.family, params.width, params.height)

    pipe, timings.load = ctx.pipelines.get(spec)

    first = params.seed if params.seed is not None else secrets.randbelow(2**31)
    seeds = [first + i for i in range(params.batch)]
    started = time.perf_counter()
    images = run_img2img(pipe, spec, image, params, seeds)
    timings.inference = round(time.perf_counter() - started, 4)

    record.state = JobState.UPLOADING
    ctx.jobs.save(record)
    started = time.perf_counter()
    keys = []
    for index, output in enumerate(images):
        key = ctx.storage.output_key(record.task_id, index)
        ctx.storage.put(key, encode_png(output), "image/png")
        keys.append(key)
    timings.upload = round(time.perf_counter() - started, 4)

    width, height = images[0].size
    record.image_keys = keys
    record.output = Output(
        images=[ctx.storage.presign(key) for key in keys], seeds=seeds, width=width, height=height
    )
    record.state = JobState.SUCCEEDED
