"""run_job on real Redis and S3, in-process: idempotent, overwrites on rerun, one-line errors."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import threading
import time
import types
import uuid
from typing import Any

import pytest
from PIL import Image, ImageChops

from shared.jobs import JobStore, WorkerLiveness, connect_redis, key
from shared.models import JobRecord, JobState, JobStatus, WebhookEvent
from shared.netguard import GuardedHttp, policy_from
from shared.queues import GENERATE_TASK, publish_turn, visibility_timeout_s
from shared.registry import Registry, load_registry
from shared.settings import Settings
from shared.storage import Storage
from shared.webhooks import DELIVER_WEBHOOK_TASK, WebhookPublisher
from tests.conftest import job_record, png_bytes
from worker.batcher import Member
from worker.pipelines import BatchItem, PipelineCache
from worker.runner import WorkerContext, run_job


class SentTasks(list[tuple[str, list[Any], str, dict[str, Any]]]):
    """Stands in for Celery's send_task: records what a publisher queues."""

    def append_task(self, name: str, args: list[Any], queue: str, **options: Any) -> None:
        self.append((name, args, queue, options))

    def events(self, task_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(event, parsed payload) of every webhook queued for one task, in order."""
        return [(a[3], json.loads(a[2])) for _, a, _, _ in self if task_id in a[1]]


published = SentTasks()
BATCH_PIXEL_TOLERANCE = 2  # of 255; this CPU measures 0 (see the test)


def item(seeds: tuple[int, ...] = (1,)) -> BatchItem:
    return BatchItem(job_record("item").params, Image.new("RGB", (64, 64)), list(seeds))


@pytest.fixture(scope="module")
def ctx(stack_settings: Settings) -> WorkerContext:
    return WorkerContext(
        settings=stack_settings,
        registry=load_registry(),
        jobs=JobStore(connect_redis(stack_settings), stack_settings.job_ttl_s),
        storage=Storage(stack_settings),
        pipelines=PipelineCache(stack_settings),
        http=GuardedHttp(policy_from(stack_settings)),
        webhooks=WebhookPublisher(published.append_task, stack_settings),
        name="unit-test-worker",
    )


def queued_job(
    ctx: WorkerContext, batch: int = 2, image: bytes | None = None, webhook: str | None = None
) -> JobRecord:
    record = job_record(str(uuid.uuid4()), batch=batch, seed=11)
    if webhook is not None:
        record.webhook, record.webhook_events = webhook, list(WebhookEvent)
    ctx.storage.put(Storage.input_key(record.task_id), image or png_bytes(128, 128), "image")
    ctx.jobs.create(record)
    return record


def input_exists(ctx: WorkerContext, task_id: str) -> bool:
    listing = ctx.storage.client.list_objects_v2(
        Bucket=ctx.storage.bucket, Prefix=Storage.input_key(task_id)
    )
    return bool(listing.get("Contents"))


def stored_keys(ctx: WorkerContext, task_id: str) -> list[str]:
    listing = ctx.storage.client.list_objects_v2(
        Bucket=ctx.storage.bucket, Prefix=f"outputs/{task_id}/"
    )
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_job_succeeds_with_outputs_under_task_derived_keys(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    done = run_job(ctx, job.task_id)
    assert done is not None and done.status is JobStatus.SUCCESS, done and done.error
    assert done.image_keys == [f"outputs/{job.task_id}/0.png", f"outputs/{job.task_id}/1.png"]
    assert done.preview_keys == [f"outputs/{job.task_id}/{i}.low.jpeg" for i in (0, 1)]
    assert stored_keys(ctx, job.task_id) == sorted(done.image_keys + done.preview_keys)
    assert not input_exists(ctx, job.task_id)  # the inline image is dropped at the end


def test_finished_job_is_not_run_again(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    first = run_job(ctx, job.task_id)
    assert first is not None
    assert run_job(ctx, job.task_id) is None
    assert ctx.jobs.get(job.task_id) == first


def test_rerun_after_a_lost_worker_overwrites_instead_of_duplicating(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    run_job(ctx, job.task_id)
    record = ctx.jobs.get(job.task_id)
    record.state = JobState.RUNNING  # as if the worker died after uploading, before recording
    ctx.jobs.save(record)
    ctx.storage.put(Storage.input_key(job.task_id), png_bytes(128, 128), "image")
    again = run_job(ctx, job.task_id)
    assert again is not None and again.status is JobStatus.SUCCESS
    assert again.attempts == 2
    # Still two images and two previews, not twice that.
    assert stored_keys(ctx, job.task_id) == sorted(again.image_keys + again.preview_keys)


def test_job_without_a_record_is_dropped(ctx: WorkerContext) -> None:
    assert run_job(ctx, "no-such-task") is None


def test_pipeline_failure_ends_failed_with_one_line(ctx: WorkerContext) -> None:
    job = queued_job(ctx)
    job.params.app_id = "sd15"  # a real model: no Hub here
    ctx.jobs.save(job)
    ctx.settings.model_dir.mkdir(parents=True, exist_ok=True)
    done = run_job(ctx, job.task_id)
    assert done is not None and done.status is JobStatus.FAILED
    assert done.error is not None and "\n" not in done.error
    assert done.error.startswith("model 'sd15' failed to load")


def test_webhook_events_are_queued_start_progress_completed(ctx: WorkerContext) -> None:
    job = queued_job(ctx, batch=1, webhook="https://hooks.example/easel")
    done = run_job(ctx, job.task_id)
    assert done is not None and done.status is JobStatus.SUCCESS
    events = published.events(job.task_id)
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "completed"
    assert set(names[1:-1]) == {"progress"}, names  # at least one, throttled
    start, completed = events[0][1], events[-1][1]
    assert start["type"] == "task.start" and start["data"]["state"] == "running"
    assert completed["data"]["status"] == "SUCCESS"
    assert len(completed["data"]["output"]["images"]) == 1
    sent = [entry for entry in published if job.task_id in entry[1][1]]
    assert {name for name, *_ in sent} == {DELIVER_WEBHOOK_TASK}
    assert {queue for _, _, queue, _ in sent} == {ctx.settings.webhook_queue}
    assert all(opts.get("expires") for _, args, _, opts in sent if args[3] == "progress")
    assert all("expires" not in opts for _, args, _, opts in sent if args[3] != "progress")


def test_the_completed_webhook_rides_out_a_broker_restart(ctx: WorkerContext) -> None:
    """The job's record is written; the broker refuses twice, then takes the event."""
    refusals: list[str] = []

    def flaky(name: str, args: list[Any], queue: str, **options: Any) -> None:
        if args[3] == "completed" and len(refusals) < 2:
            refusals.append(args[3])
            raise OSError("connection refused")
        published.append_task(name, args, queue, **options)

    flaky_ctx = dataclasses.replace(ctx, webhooks=WebhookPublisher(flaky, ctx.settings))
    job = queued_job(ctx, batch=1, webhook="https://hooks.example/easel")
    done = run_job(flaky_ctx, job.task_id)
    assert done is not None and done.status is JobStatus.SUCCESS
    assert refusals == ["completed", "completed"]
    names = [name for name, _ in published.events(job.task_id)]
    assert names[0] == "start" and names.count("completed") == 1 and names[-1] == "completed"


def test_a_job_without_webhook_queues_nothing(ctx: WorkerContext) -> None:
    job = queued_job(ctx, batch=1)
    run_job(ctx, job.task_id)
    assert published.events(job.task_id) == []


def test_redelivered_finished_job_queues_its_completed_webhook_again(ctx: WorkerContext) -> None:
    """Its worker may have died between recording the result and queuing the webhook."""
    job = queued_job(ctx, batch=1, webhook="https://hooks.example/easel")
    run_job(ctx, job.task_id)
    before = [args[1] for _, args, _, _ in published if job.task_id in args[1]]
    assert run_job(ctx, job.task_id) is None
    after = [args[1] for _, args, _, _ in published if job.task_id in args[1]]
    assert after == [*before, f"msg_{job.task_id}_completed"]  # same id: receivers dedupe


def as_if_running_on(ctx: WorkerContext, job: JobRecord, worker: str, attempts: int) -> None:
    record = ctx.jobs.get(job.task_id)
    record.state, record.worker, record.attempts = JobState.RUNNING, worker, attempts
    ctx.jobs.save(record)


def test_a_redelivery_never_runs_a_job_its_live_worker_still_holds(ctx: WorkerContext) -> None:
    job = queued_job(ctx, batch=1)
    queue = ctx.settings.queue_for(ctx.settings.worker_gpu)
    WorkerLiveness(ctx.jobs.redis, ctx.settings.worker_stale_after_s).beat(queue, "alive/7")
    as_if_running_on(ctx, job, "alive/7", attempts=1)
    assert run_job(ctx, job.task_id) is None
    record = ctx.jobs.get(job.task_id)
    assert (record.state, record.worker, record.attempts) == (JobState.RUNNING, "alive/7", 1)


def test_a_job_that_keeps_losing_its_worker_ends_failed(ctx: WorkerContext) -> None:
    job = queued_job(ctx, batch=1)
    as_if_running_on(ctx, job, "gone/8", attempts=ctx.settings.max_attempts)
    done = run_job(ctx, job.task_id)
    assert done is not None and done.status is JobStatus.FAILED
    assert done.error == f"worker lost {ctx.settings.max_attempts} times while running this job"
    assert stored_keys(ctx, job.task_id) == []  # it did not run again


def test_a_dead_workers_job_runs_again_with_attempts_left(ctx: WorkerContext) -> None:
    job = queued_job(ctx, batch=1)
    as_if_running_on(ctx, job, "gone/9", attempts=1)
    done = run_job(ctx, job.task_id)
    assert done is not None and done.status is JobStatus.SUCCESS and done.attempts == 2


class SlowPipe:
    """A pipeline stand-in whose steps take ``step_s`` each; calls the step callback."""

    vae = types.SimpleNamespace(enable_tiling=lambda: None, disable_tiling=lambda: None)
    unet = object()

    def __init__(self, step_s: float, steps: int = 10) -> None:
        self.step_s, self.num_timesteps, self.calls = step_s, steps, 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        for index in range(self.num_timesteps):
            time.sleep(self.step_s)
            kwargs["callback_on_step_end"](self, index, None, {})
        rows = len(kwargs["prompt"])
        return types.SimpleNamespace(images=[Image.new("RGB", (64, 64))] * rows)


def test_a_job_past_its_time_limit_ends_failed_at_the_next_step(ctx: WorkerContext) -> None:
    """The threads pool has no time limits of its own: the step callback enforces them."""
    spec = ctx.registry.get("tiny-sd").model_copy(update={"time_limit_s": 1})
    registry = Registry([spec])
    pipe = SlowPipe(step_s=0.3)
    slow = dataclasses.replace(
        ctx, registry=registry, pipelines=PipelineCache(ctx.settings, load=lambda s, _: pipe)
    )
    job = queued_job(ctx, batch=1)
    started = time.monotonic()
    done = run_job(slow, job.task_id)
    assert done is not None and done.status is JobStatus.FAILED
    assert done.error == "timed out: the job ran past its time limit"
    assert time.monotonic() - started < 2.5  # stopped at the step past 1 s, not after 3 s


def test_a_message_is_a_turn_that_names_no_job(ctx: WorkerContext) -> None:
    sent = SentTasks()
    publish_turn(lambda name, queue: sent.append_task(name, [], queue), "q", count=2)
    assert sent == [(GENERATE_TASK, [], "q", {})] * 2
    assert visibility_timeout_s(ctx.settings) > 3 * 3600 + 60  # the longest a model may set


def test_out_of_memory_fails_the_job_and_empties_the_cache(ctx: WorkerContext) -> None:
    calls: list[str] = []

    def loader(spec: Any, settings: Any) -> Any:
        calls.append(spec.app_id)
        if spec.app_id == "tiny-sd":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return object()

    cache = PipelineCache(ctx.settings, load=loader)
    cache.get(ctx.registry.get("tiny-sdxl"))  # something held before the OOM
    oom = dataclasses.replace(ctx, pipelines=cache)
    job = queued_job(ctx, batch=1)
    done = run_job(oom, job.task_id)
    assert done is not None and done.status is JobStatus.FAILED
    assert done.error is not None and "out of memory" in done.error and "\n" not in done.error
    assert cache.loaded() == []  # freed for the next job


def test_any_other_pipeline_error_fails_the_job_and_keeps_the_models(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import worker.calls
    import worker.pipelines

    def broken(*args: Any) -> Any:
        raise ValueError("the pipeline broke")

    released: list[str] = []
    monkeypatch.setattr(worker.calls, "run_img2img", broken)
    monkeypatch.setattr(worker.pipelines, "release_memory", released.append)
    cache = PipelineCache(ctx.settings, load=lambda spec, settings: object())
    broken = dataclasses.replace(ctx, pipelines=cache)
    job = queued_job(ctx, batch=1)
    done = run_job(broken, job.task_id)
    assert done is not None and done.status is JobStatus.FAILED
    assert done.error is not None and done.error.startswith("internal error while running")
    assert "ValueError" not in done.error and "broke" not in done.error  # no exception text
    error_id = done.error.rsplit("error id ", 1)[1].rstrip(")")
    [logged] = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged.exc_info is not None and "the pipeline broke" in str(logged.exc_info[1])
    assert released == [ctx.settings.device]  # the failed job's memory, freed
    assert cache.loaded() == ["tiny-sd"]  # the model stays warm for the next job


def test_progress_is_written_at_most_four_times_a_second_and_always_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.calls

    clock = [1000.0]
    monkeypatch.setattr(worker.calls.time, "monotonic", lambda: clock[0])
    saved: list[int] = []
    jobs = types.SimpleNamespace(
        canceled_among=lambda task_ids: set(),
        save=lambda record: saved.append(record.progress.step),
    )
    ctx = types.SimpleNamespace(jobs=jobs, notify=lambda record, event: None)
    member = Member(job_record("throttled"), load_registry().get("tiny-sd"), item(), 2000.0)
    reporter = worker.calls.GroupReporter(ctx, [member])  # type: ignore[arg-type]
    for step in range(1, 31):  # 30 steps, 0.1 s apart: 3 s of denoising
        reporter(step, 30)
        clock[0] += 0.1
    assert saved[0] == 1 and saved[-1] == 30
    gaps = [later - earlier for earlier, later in itertools.pairwise(saved[:-1])]
    assert all(gap >= 3 for gap in gaps), saved  # 0.3 s apart at least: under 4 a second
    assert len(saved) <= 3 * 4 + 2, saved


def test_a_job_reports_a_safety_flag_per_image_and_the_checks_time(ctx: WorkerContext) -> None:
    job = queued_job(ctx, batch=3)
    done = run_job(ctx, job.task_id)
    assert done is not None and done.status is JobStatus.SUCCESS, done and done.error
    assert done.output is not None
    flags = done.output.Has_NSFW_Content
    assert len(flags) == 3 and all(isinstance(flag, bool) for flag in flags)
    assert done.time_required.safety is not None and done.time_required.safety >= 0
    assert "builtin:tiny-safety" in ctx.checkers.loaded()  # cached for the next job


def test_a_blocked_job_stores_black_images_and_flags_them(ctx: WorkerContext) -> None:
    settings = ctx.settings.model_copy(update={"nsfw_threshold": -1.0, "nsfw_policy": "block"})
    job = queued_job(ctx, batch=2)
    done = run_job(dataclasses.replace(ctx, settings=settings), job.task_id)
    assert done is not None and done.output is not None, done and done.error
    assert done.output.Has_NSFW_Content == [True, True]
    for stored_key in done.image_keys + done.preview_keys:
        stored = Image.open(io.BytesIO(ctx.storage.get(stored_key))).convert("RGB")
        assert stored.getextrema() == ((0, 0), (0, 0), (0, 0)), stored_key


def test_a_model_without_a_checker_flags_nothing_and_times_no_check(ctx: WorkerContext) -> None:
    spec = ctx.registry.get("tiny-sd").model_copy(update={"safety_checker": None})
    unchecked = dataclasses.replace(ctx, registry=Registry([spec]))
    job = queued_job(ctx, batch=2)
    done = run_job(unchecked, job.task_id)
    assert done is not None and done.output is not None, done and done.error
    assert done.output.Has_NSFW_Content == [False, False]
    assert done.time_required.safety is None


def batching(ctx: WorkerContext, max_wait_ms: float = 1000, **changes: Any) -> WorkerContext:
    """The context with tiny-sd waiting long enough for every partner a test starts."""
    spec = ctx.registry.get("tiny-sd").model_copy(
        update={"max_batch": 4, "max_wait_ms": max_wait_ms}
    )
    return dataclasses.replace(ctx, registry=Registry([spec]), **changes)


def run_together(ctx: WorkerContext, task_ids: list[str]) -> dict[str, JobRecord | None]:
    """run_job for each id on its own thread, as Celery's threads pool runs them."""
    done: dict[str, JobRecord | None] = {}
    threads = [
        threading.Thread(target=lambda t=t: done.__setitem__(t, run_job(ctx, t))) for t in task_ids
    ]
    with ctx.batcher.arriving():  # until every thread is under way, as a busy queue is
        for thread in threads:
            thread.start()
        time.sleep(0.2)
    for thread in threads:
        thread.join(timeout=120)
    return done


class Gated:
    """A real pipeline whose calls wait for ``gate``: while it is shut the GPU is busy."""

    def __init__(self, pipe: Any, gate: threading.Event) -> None:
        self.pipe, self.gate = pipe, gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        self.gate.wait()
        return self.pipe(**kwargs)


def run_behind_a_busy_gpu(ctx: WorkerContext, task_ids: list[str]) -> dict[str, JobRecord | None]:
    """The jobs arrive while the GPU runs another job (its own guidance scale, so no
    partner of theirs), so they all wait for the next call, as on a loaded queue."""
    gate = threading.Event()
    real = ctx.pipelines
    gated = dataclasses.replace(
        ctx, pipelines=PipelineCache(ctx.settings, load=lambda s, _: Gated(real.get(s)[0], gate))
    )
    other = queued_job(ctx, batch=1)
    other.params.guidance_scale = 3.0
    ctx.jobs.save(other)
    first = threading.Thread(target=run_job, args=(gated, other.task_id))
    first.start()
    time.sleep(0.5)  # it is on the GPU, held at the gate
    threading.Timer(0.8, gate.set).start()
    done = run_together(gated, task_ids)
    first.join(timeout=60)
    return done


def pixels(ctx: WorkerContext, record: JobRecord) -> list[Image.Image]:
    return [Image.open(io.BytesIO(ctx.storage.get(k))).convert("RGB") for k in record.image_keys]


def test_partners_share_one_call_and_each_keeps_its_own_job(ctx: WorkerContext) -> None:
    together = batching(ctx)
    jobs = [queued_job(ctx, batch=b, webhook="https://hooks.example/b") for b in (1, 2, 1)]
    done = run_behind_a_busy_gpu(together, [j.task_id for j in jobs])
    for job in jobs:
        record, batch = done[job.task_id], job.params.batch
        assert record is not None and record.status is JobStatus.SUCCESS, record
        assert record.call_images == 4  # 1 + 2 + 1 images in one pipeline call
        assert record.output is not None and len(record.output.Has_NSFW_Content) == batch
        assert record.image_keys == [f"outputs/{job.task_id}/{i}.png" for i in range(batch)]
        names = [name for name, _ in published.events(job.task_id)]
        assert names[0] == "start" and "progress" in names and names[-1] == "completed"


def test_a_job_batched_with_partners_matches_the_job_run_alone(ctx: WorkerContext) -> None:
    """The README's reproducibility promise: same seed, same image, partners or not, up to
    float rounding in a wider matmul (the bound below is what the CPU shows)."""
    alone = queued_job(ctx, batch=2)
    first = run_job(ctx, alone.task_id)
    assert first is not None and first.call_images == 2
    again = queued_job(ctx, batch=2)  # same seed (11) and params
    others = [queued_job(ctx, batch=1) for _ in range(2)]
    for other in others:
        other.params.prompt, other.params.seed = "something else", 99
        ctx.jobs.save(other)
    done = run_behind_a_busy_gpu(batching(ctx), [again.task_id] + [o.task_id for o in others])
    record = done[again.task_id]
    assert record is not None and record.call_images == 4
    diffs = [
        max(high for _, high in ImageChops.difference(a, b).getextrema())
        for a, b in zip(pixels(ctx, first), pixels(ctx, record), strict=True)
    ]
    print(f"largest pixel difference, batched vs alone: {max(diffs)}")
    assert max(diffs) <= BATCH_PIXEL_TOLERANCE, diffs


def test_a_canceled_partner_ends_at_once_and_the_others_finish(ctx: WorkerContext) -> None:
    pipe = SlowPipe(step_s=0.2)  # 10 steps: 2 s a call
    load = PipelineCache(ctx.settings, load=lambda s, _: pipe)
    slow = batching(ctx, max_wait_ms=200, pipelines=load)  # the call starts within 0.3 s
    canceled, kept = queued_job(ctx, batch=1), queued_job(ctx, batch=1)
    threading.Timer(0.8, lambda: ctx.jobs.cancel(canceled.task_id)).start()
    done = run_together(slow, [canceled.task_id, kept.task_id])
    gone, finished = done[canceled.task_id], done[kept.task_id]
    assert gone is not None and gone.state is JobState.CANCELED
    assert finished is not None and finished.status is JobStatus.SUCCESS
    assert finished.call_images == 2 and pipe.calls == 1  # one call, never rerun
    assert gone.finished_at is not None and finished.finished_at is not None
    assert finished.finished_at - gone.finished_at > 0.5  # it ended mid-call, not after


def test_a_job_canceled_while_held_for_the_gpu_never_runs(ctx: WorkerContext) -> None:
    """Held by a worker but not yet in a call, a job is still queued: cancel ends it there."""
    pipe = SlowPipe(step_s=0.01)
    load = PipelineCache(ctx.settings, load=lambda s, _: pipe)
    held = batching(ctx, max_wait_ms=1500, pipelines=load)
    job = queued_job(ctx, batch=1)
    threading.Timer(0.5, lambda: ctx.jobs.cancel(job.task_id)).start()
    with held.batcher.arriving():  # a partner on its way, which never comes
        assert run_together(held, [job.task_id]) == {job.task_id: None}
    record = ctx.jobs.get(job.task_id)
    assert record.state is JobState.CANCELED and record.attempts == 0 and pipe.calls == 0


def test_a_job_canceled_while_held_stays_canceled_whatever_its_thread_meets(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner cancels while the worker fetches the input; the API deletes that input, so
    the fetch fails: the job's end is the owner's cancel, never a FAILED written over it."""
    import worker.runner
    from shared.errors import JobError

    job = queued_job(ctx, batch=1)

    def canceled_meanwhile(context: WorkerContext, task_id: str) -> bytes:
        ctx.jobs.cancel(task_id)
        raise JobError("image: the inline image expired before the job ran")

    monkeypatch.setattr(worker.runner, "read_inline_input", canceled_meanwhile)
    assert run_job(ctx, job.task_id) is None
    record = ctx.jobs.get(job.task_id)
    assert record.state is JobState.CANCELED and record.attempts == 0
    assert int(ctx.jobs.redis.get(key("done", job.task_id)) or 0) == 1  # ended once
