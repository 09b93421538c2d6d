"""One job, top to bottom: the plain functions a Celery task calls, on the job's own thread.

0. A Celery message is a turn: pop the next job in fair order across API keys
   (shared/fairness.py), claimed for this worker.
1. Load the job record; skip it if it already ended (a redelivery), and pop again.
2. Mark it running, atomically, unless it was canceled while it waited.
3. Get the input image (inline from S3, or fetched by URL) and fit it.
4-5b. Hand the job to the batcher and wait: its GPU thread runs the job in one pipeline
   call with compatible partners and checks the images' safety (worker/batcher.py,
   worker/calls.py). Meanwhile this thread holds no GPU, and other jobs' threads fetch,
   encode and upload.
6. Upload each image (and a small preview) under keys derived from the task id.
7. Record the result, or the one-line reason it failed.

Webhook events (start, progress, completed) are only queued here (shared/webhooks.py);
a separate process delivers them, so a slow receiver never holds up the GPU.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TypeVar

from botocore.exceptions import ClientError
from PIL import Image
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
)

from shared.errors import BackendUnavailable, JobCanceled, JobError, UnknownTask
from shared.jobs import JobStore, WorkerLiveness
from shared.logs import task_context
from shared.models import (
    Envelope,
    GenerationParams,
    JobRecord,
    JobState,
    Output,
    OutputFormat,
    WebhookEvent,
)
from shared.netguard import GuardedHttp
from shared.registry import Registry
from shared.settings import Settings
from shared.storage import Storage
from shared.webhooks import WebhookPublisher
from worker.batcher import Batcher, Dropped, Member
from worker.calls import PERSIST_FOR_S, admit, execute, observe
from worker.fetch import fetch_image
from worker.images import encode, prepare_image, preview
from worker.metrics import observe_job
from worker.pipelines import BatchItem, PipelineCache, is_out_of_memory
from worker.safety import SafetyCheckers

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class WorkerContext:
    """What a worker process keeps between jobs."""

    settings: Settings
    registry: Registry
    jobs: JobStore
    storage: Storage
    pipelines: PipelineCache
    http: GuardedHttp
    webhooks: WebhookPublisher
    name: str = field(default="worker")
    checkers: SafetyCheckers = field(default_factory=SafetyCheckers)
    # Mirrors the API's Services: who is live, and the queue this worker consumes.
    liveness: WorkerLiveness = field(init=False)
    queue: str = field(init=False)
    batcher: Batcher = field(init=False)  # the one thread that runs pipeline calls
    # The jobs this process has popped and not yet finished with: its heartbeat says so, and
    # the reaper trusts a record naming this worker only for the jobs listed here.
    in_hand: set[str] = field(init=False, default_factory=set)
    _hand_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.liveness = WorkerLiveness(self.jobs.redis, self.settings.worker_stale_after_s)
        self.queue = self.settings.queue_for(self.settings.worker_gpu)
        self.batcher = Batcher(
            execute=lambda group: execute(self, group),
            is_out_of_memory=is_out_of_memory,
            recover=self.pipelines.release,
            observe=lambda group, idle_s: observe(self, group, idle_s),
            admit=lambda group: admit(self, group),
        )

    def hands(self) -> list[str]:
        """What ``in_hand`` holds now."""
        with self._hand_lock:
            return sorted(self.in_hand)

    @contextmanager
    def holding(self, task_id: str) -> Iterator[None]:
        """Count a job in hand from its pop to the end of its run, final write included."""
        with self._hand_lock:
            self.in_hand.add(task_id)
        try:
            yield
        finally:
            with self._hand_lock:
                self.in_hand.discard(task_id)

    def live_workers(self) -> set[str]:
        """The workers heartbeating on this worker's queue now."""
        return set(self.liveness.live(self.queue))

    def notify(self, record: JobRecord, event: WebhookEvent) -> None:
        """Queue a webhook event for this job, if it asked for one."""
        if record.webhook is None or event not in record.webhook_events:
            return
        urls = None
        if record.output is not None:
            sign = self.storage.presign
            urls = ([sign(k) for k in record.image_keys], [sign(k) for k in record.preview_keys])
        envelope = Envelope.for_job(record, urls)
        if event is not WebhookEvent.COMPLETED:
            self.webhooks.publish(record, event, envelope)  # best effort: the next one follows
            return
        # The one event a receiver must get: ride out a broker restart, as the final write does.
        Retrying(
            retry=retry_if_result(lambda queued: not queued),
            wait=wait_exponential(multiplier=0.2, max=5),
            stop=stop_after_delay(PERSIST_FOR_S),
            before_sleep=lambda state: log.warning("broker unreachable; retrying the webhook"),
            retry_error_callback=lambda state: False,
        )(self.webhooks.publish, record, event, envelope)


def run_turn(ctx: WorkerContext) -> JobRecord | None:
    """One Celery message: pop jobs in fair order until one runs here; None if none waits.

    Turns are interchangeable (one is published per job put in a lane), so a turn that
    pops a job it cannot run (it ended, or a live worker holds it) pops the next one.
    """
    while (task_id := ctx.jobs.pop(ctx.queue, ctx.name)) is not None:
        # (A heartbeat between the pop and this line misses the job; the reaper allows for
        # that: worker/reaper.py HANDS_MARGIN_S.)
        with task_context(task_id), ctx.holding(task_id):
            log.info("job %s is next in fair order; taking it", task_id)
            done = run_job(ctx, task_id)
        if done is not None:
            return done
    return None


def run_job(ctx: WorkerContext, task_id: str) -> JobRecord | None:
    """Run one job to a terminal state; None when there is nothing (left) to do.

    The parameters are the record's, read in step 1: the record is the source of truth.
    """
    try:
        record = ctx.jobs.start(task_id, lambda r: take(ctx, r))
    except UnknownTask:
        log.warning("job %s has no record (expired?); dropping it", task_id)
        ctx.jobs.unclaim(ctx.queue, task_id, ended=True)
        return None
    if record is None:
        log.info("job %s ended, was canceled or runs elsewhere; not running it", task_id)
        resend_completed(ctx, task_id)
        return None
    held = record.state is JobState.QUEUED  # here until the GPU thread admits it
    if held:
        try:
            run_guarded(ctx, record)
        except Dropped:
            log.info("job %s was canceled or taken back while it waited; not running it", task_id)
            return None
    record.finished_at = time.time()
    record.time_required.total = round(record.finished_at - record.created_at, 4)
    if not held:  # failed in step 2 (too many lost workers): that write stands; end it
        persist(ctx.jobs.finish, record)
    elif not persist(ctx.jobs.finish_unless_ended, record):
        # Canceled while it waited here (its input fetch failed meanwhile, say): the
        # owner's cancel stands, and the API sent its webhook.
        log.info("job %s ended elsewhere while it waited; keeping that end", task_id)
        return None
    if record.params.image_url is None:
        ctx.storage.delete(Storage.input_key(task_id))  # the bucket's rule is the backstop
    observe_job(record)
    log.info("job %s %s in %.2f s", task_id, record.state.value, record.time_required.total)
    ctx.notify(record, WebhookEvent.COMPLETED)
    return record


def run_guarded(ctx: WorkerContext, record: JobRecord) -> None:
    """Steps 3 to 7, turning every failure into the job's end state and one plain line."""
    try:
        generate(ctx, record)
    except Dropped:
        raise  # it ended elsewhere: nothing of ours to write
    except JobCanceled:
        record.state, record.error = JobState.CANCELED, "canceled by the client"
    except JobError as exc:
        fail(record, str(exc))
    except Exception as exc:
        # No exception text reaches a client: it may hold paths, values or worse.
        error_id = secrets.token_hex(6)
        log.exception("job %s failed unexpectedly (error id %s)", record.task_id, error_id)
        if is_out_of_memory(exc):
            fail(record, f"out of memory: try a smaller batch or size (error id {error_id})")
            ctx.pipelines.clear()  # the next job starts from a clean GPU
        else:
            fail(record, f"internal error while running the job (error id {error_id})")
            ctx.pipelines.release()  # keep the models, free the failed job's memory


def take(ctx: WorkerContext, record: JobRecord) -> bool:
    """Step 2's decision, inside the atomic start: hold the job, fail it, or leave it be.

    A record naming a worker is a redelivery. If that worker is alive it still holds or
    runs the job (Redis redelivered early), so leave it. If it is gone, hold the job here,
    unless it has already lost ``max_attempts`` workers while running: then it ends FAILED
    rather than take down worker after worker.
    """
    if record.worker is not None:
        if record.worker in ctx.live_workers():
            return False
        running = record.state in (JobState.RUNNING, JobState.UPLOADING)
        if running and record.attempts >= ctx.settings.max_attempts:
            fail(record, f"worker lost {record.attempts} times while running this job")
            return True
    # Held: still queued (it keeps its queue position) until the GPU thread admits it, but
    # named as this worker's, so the reaper puts it back if this worker dies.
    record.state, record.progress = JobState.QUEUED, None
    record.worker, record.worker_gpu = ctx.name, ctx.settings.worker_gpu
    return True


def persist(write: Callable[[JobRecord], T], record: JobRecord) -> T:
    """Write a final record, riding out a Redis restart: losing it would strand the job."""
    for attempt in Retrying(
        retry=retry_if_exception_type(BackendUnavailable),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_delay(PERSIST_FOR_S),
        before_sleep=lambda state: log.warning("Redis unreachable; retrying the final write"),
        reraise=True,
    ):
        with attempt:
            return write(record)
    raise AssertionError("unreachable: Retrying reraises")


def resend_completed(ctx: WorkerContext, task_id: str) -> None:
    """A job popped again after a worker ended it: its worker may have died before
    queuing the completed webhook, so queue it again (same webhook-id; receivers dedupe).
    A job canceled while it waited never ran; the API sent its webhook. Either way the
    claim goes; a job a live worker holds keeps that worker's index entries."""
    ended = True
    with suppress(UnknownTask):
        record = ctx.jobs.get(task_id)
        ended = record.status.is_terminal
        if ended and record.attempts > 0:
            ctx.notify(record, WebhookEvent.COMPLETED)
    ctx.jobs.unclaim(ctx.queue, task_id, ended=ended)


def fail(record: JobRecord, reason: str) -> None:
    """End a job as FAILED with a one-line reason."""
    record.state = JobState.FAILED
    record.error = " ".join(reason.split())[:500]


def generate(ctx: WorkerContext, record: JobRecord) -> None:
    """Steps 3 to 7 for a running job; raises JobError on bad input or a model failure."""
    params = record.params
    spec = ctx.registry.get(params.app_id)
    timings = record.time_required
    limit_s = spec.time_limit_s or ctx.settings.job_soft_time_limit_s
    deadline = time.monotonic() + limit_s

    # 3. Get the input image and fit it; the GPU thread may wait for it as a partner.
    with ctx.batcher.arriving():
        if params.image_url is None:
            data = read_inline_input(ctx, record.task_id)
        else:
            settings = ctx.settings
            data = fetch_image(
                ctx.http, params.image_url, settings.image_max_bytes, settings.image_fetch_timeout_s
            )
        image = prepare_image(data, spec.family, params.width, params.height)

    # 4-5b. The GPU thread runs it, with partners, one seed per image; a blurred or
    # blocked image is never stored.
    first = params.seed if params.seed is not None else secrets.randbelow(2**31)
    seeds = [first + i for i in range(params.batch)]
    member = ctx.batcher.run(Member(record, spec, BatchItem(params, image, seeds), deadline))
    images, flags = member.images, member.flags
    record.call_images = member.call_images

    # 6. Upload each image and its preview.
    record.state = JobState.UPLOADING
    with suppress(BackendUnavailable):  # a progress note; the final write is retried
        ctx.jobs.save(record)
    started = time.perf_counter()
    record.image_keys, record.preview_keys = upload(ctx, record.task_id, images, params)
    timings.upload = round(time.perf_counter() - started, 4)

    # 7. Record the result.
    width, height = images[0].size
    record.output = Output(
        result=[ctx.storage.presign(key) for key in record.image_keys],
        low_res_urls=[ctx.storage.presign(key) for key in record.preview_keys],
        Has_NSFW_Content=flags,
        seeds=seeds,
        width=width,
        height=height,
    )
    record.state = JobState.SUCCEEDED


def read_inline_input(ctx: WorkerContext, task_id: str) -> bytes:
    """The inline image the API put in S3 for this job."""
    try:
        return ctx.storage.get(Storage.input_key(task_id))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise JobError("image: the inline image expired before the job ran") from None
        raise


def upload(
    ctx: WorkerContext, task_id: str, images: list[Image.Image], params: GenerationParams
) -> tuple[list[str], list[str]]:
    """Step 6: each image in its format and a JPEG preview; the keys of both.

    Every object is encoded and uploaded on its own thread: Pillow's encoders and boto3's
    sockets release the GIL, so the batch takes about as long as its slowest object.
    """
    fmt = params.output_format
    keys = [ctx.storage.output_key(task_id, f"{i}.{fmt.value}") for i in range(len(images))]
    previews = [ctx.storage.output_key(task_id, f"{i}.low.jpeg") for i in range(len(images))]

    def full(index: int) -> None:
        body = encode(images[index], fmt, params.output_quality)
        ctx.storage.put(keys[index], body, fmt.content_type)

    def small(index: int) -> None:
        body = preview(images[index])
        ctx.storage.put(previews[index], body, OutputFormat.JPEG.content_type)

    with ThreadPoolExecutor(max_workers=2 * len(images)) as pool:
        done = [pool.submit(put, i) for put in (full, small) for i in range(len(images))]
        for future in done:
            future.result()  # the first failure propagates, as it did one at a time
    return keys, previews
