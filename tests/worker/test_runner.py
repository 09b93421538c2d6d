"""run_job on real Redis and S3, in-process: idempotent, overwrites on rerun, one-line errors."""

from __future__ import annotations

import uuid

import pytest

from shared.jobs import JobStore, connect_redis
from shared.models import JobRecord, JobState, JobStatus
from shared.registry import load_registry
from shared.settings import Settings
from shared.storage import Storage
from tests.conftest import job_record, png_bytes
from worker.pipelines import PipelineCache
from worker.runner import WorkerContext, run_job


@pytest.fixture(scope="module")
def ctx(stack_settings: Settings) -> WorkerContext:
    return WorkerContext(
        settings=stack_settings,
        registry=load_registry(),
        jobs=JobStore(connect_redis(stack_settings), stack_settings.job_ttl_s),
        storage=Storage(stack_settings),
        pipelines=PipelineCache(stack_settings),
        name="unit-test-worker",
    )


def queued_job(ctx: WorkerContext, batch: int = 2, image: bytes | None = None) -> JobRecord:
    record = job_record(str(uuid.uuid4()), batch=batch, seed=11)
    ctx.jobs.create(record, png_bytes(128, 128) if image is None else image)
    return record


def stored_keys(ctx: WorkerContext, task_id: str) -> list[str]:
    listing = ctx.storage.client.list_objects_v2(
        Bucket=ctx.storage.bucket, Prefix=f"outputs/{task_id}/"
    )
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_job_succeeds_with_outputs_under_task_derived_keys(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    done = run_job(ctx, job.task_id, job.params)
    assert done is not None and done.status is JobStatus.SUCCESS, done and done.error
    assert done.image_keys == [f"outputs/{job.task_id}/0.png", f"outputs/{job.task_id}/1.png"]
    assert done.preview_keys == [f"outputs/{job.task_id}/{i}.low.jpeg" for i in (0, 1)]
    assert stored_keys(ctx, job.task_id) == sorted(done.image_keys + done.preview_keys)
    assert ctx.jobs.input_image(job.task_id) is None  # the inline image is dropped at the end


def test_finished_job_is_not_run_again(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    first = run_job(ctx, job.task_id, job.params)
    assert first is not None
    assert run_job(ctx, job.task_id, job.params) is None
    assert ctx.jobs.get(job.task_id) == first


def test_rerun_after_a_lost_worker_overwrites_instead_of_duplicating(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    run_job(ctx, job.task_id, job.params)
    record = ctx.jobs.get(job.task_id)
    record.state = JobState.RUNNING  # as if the worker died after uploading, before recording
    ctx.jobs.save(record)
    ctx.jobs.redis.set(f"easel:input:{job.task_id}", png_bytes(128, 128))
    again = run_job(ctx, job.task_id, job.params)
    assert again is not None and again.status is JobStatus.SUCCESS
    assert again.attempts == 2
    # Still two images and two previews, not twice that.
    assert stored_keys(ctx, job.task_id) == sorted(again.image_keys + again.preview_keys)


def test_job_without_a_record_is_dropped(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    assert run_job(ctx, "no-such-task", job.params) is None


def test_pipeline_failure_ends_failed_with_one_line(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    bad = job.params.model_copy(update={"app_id": "sd15"})  # a real model: no Hub here
    ctx.settings.model_dir.mkdir(parents=True, exist_ok=True)
    done = run_job(ctx, job.task_id, bad)
    assert done is not None and done.status is JobStatus.FAILED
    assert done.error is not None and "\n" not in done.error
    assert done.error.startswith("model 'sd15' failed to load")
