"""What the GPU thread runs for one group of compatible jobs (worker/batcher.py).

4. Get the pipeline from the per-process cache.
5. Run one pipeline call over every member's images, one seed per image, reporting each
   member's progress and ending a member at the next step when its owner cancels it or
   its time limit passes; its partners run on.
5b. Check every image's safety in one checker call (worker/safety.py), apply the NSFW
   policy, and hand each member its own images, flags and timings.

Steps 3 and 6-7 run on each job's own thread (worker/runner.py), so the GPU thread does
only GPU work.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from typing import TYPE_CHECKING

from PIL import Image
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.errors import BackendUnavailable, JobCanceled, JobError
from shared.models import JobRecord, JobState, Progress, WebhookEvent
from shared.registry import ModelSpec
from worker.batcher import Dropped, Member, NobodyLeft
from worker.metrics import observe_batch, observe_gpu_idle
from worker.pipelines import run_img2img
from worker.safety import apply_policy, check

if TYPE_CHECKING:
    from worker.runner import WorkerContext

log = logging.getLogger(__name__)
PERSIST_FOR_S = 300  # how long a write a job needs waits for Redis to come back
TIMED_OUT = "timed out: the job ran past its time limit"


def execute(ctx: WorkerContext, group: list[Member]) -> None:
    """Steps 4 to 5b for one admitted group; fills each member that is still live."""
    spec = group[0].spec
    # 4. The pipeline, loaded once per process.
    pipe, load_s = ctx.pipelines.get(spec)
    # 5. One call for every member's images.
    started = time.perf_counter()
    shares = run_img2img(pipe, spec, [m.item for m in group], GroupReporter(ctx, group))
    inference_s = round(time.perf_counter() - started, 4)
    pairs = zip(group, shares, strict=True)
    live = [(member, share) for member, share in pairs if not member.ended]
    call_images = sum(len(share) for share in shares)
    # 5b. One safety check over the live members' images.
    images = [image for _, share in live for image in share]
    images, flags, checker_load_s, safety_s = check_safety(ctx, spec, images)
    start = 0
    for member, share in live:
        end = start + len(share)
        member.images, member.flags = images[start:end], flags[start:end]
        member.call_images = call_images
        timings = member.record.time_required
        timings.load = round(load_s + checker_load_s, 4)
        timings.inference, timings.safety = inference_s, safety_s
        start = end


def admit(ctx: WorkerContext, group: list[Member]) -> list[Member]:
    """Mark the group's held jobs running, in one transaction that rides out a Redis
    restart; a job canceled while it waited here is dropped. The members left."""
    for member in group:  # shown while it runs; the call's final count replaces it
        member.record.call_images = sum(m.size for m in group)
    admitted = Retrying(
        retry=retry_if_exception_type(BackendUnavailable),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_delay(PERSIST_FOR_S),
        before_sleep=lambda state: log.warning("Redis unreachable; retrying an admission"),
        reraise=True,
    )(ctx.jobs.admit, [m.record for m in group], mark_running)
    taken = {id(record) for record in admitted}
    for member in group:
        if id(member.record) not in taken:
            member.end(Dropped())
        else:
            ctx.notify(member.record, WebhookEvent.START)
    return [m for m in group if not m.ended]


def mark_running(record: JobRecord) -> None:
    """What changes when the GPU thread admits a held job into a call."""
    record.state = JobState.RUNNING
    record.started_at = time.time()
    record.attempts += 1
    record.time_required.queue = round(record.started_at - record.created_at, 4)


def check_safety(
    ctx: WorkerContext, spec: ModelSpec, images: list[Image.Image]
) -> tuple[list[Image.Image], list[bool], float, float | None]:
    """Step 5b: the images the policy leaves, a flag per image, the checker's load time
    (only if warm-up did not load it) and its run time (None without a checker)."""
    source = spec.safety_checker
    if source is None or not images:
        return images, [False] * len(images), 0.0, None
    checker, load_s = ctx.checkers.get(source, ctx.settings)
    started = time.perf_counter()
    flags = check(checker, images, ctx.settings.nsfw_threshold)
    images = apply_policy(images, flags, ctx.settings.nsfw_policy)
    return images, flags, load_s, round(time.perf_counter() - started, 4)


class GroupReporter:
    """After every step: ends members canceled or out of time, writes each live member's
    progress at most 4 times a second, and stops the call once no member is left."""

    def __init__(self, ctx: WorkerContext, group: list[Member], min_interval_s: float = 0.25):
        self.ctx, self.group, self.min_interval_s = ctx, group, min_interval_s

    def __call__(self, step: int, total: int) -> None:
        live = [m for m in self.group if not m.ended]
        try:
            canceled = self.ctx.jobs.canceled_among([m.record.task_id for m in live])
        except BackendUnavailable:
            canceled = set()  # Redis is restarting: keep going; the final write waits for it
        now = time.monotonic()
        for member in live:
            if member.record.task_id in canceled:
                member.end(JobCanceled("canceled by the client"))
            elif now > member.deadline:
                member.end(JobError(TIMED_OUT))
            elif now - member.last_progress >= self.min_interval_s or step == total:
                self.report(member, Progress(step=step, total=total))
                member.last_progress = now
        if all(m.ended for m in self.group):
            raise NobodyLeft

    def report(self, member: Member, progress: Progress) -> None:
        """Progress may drop: a failed write or webhook never stops the job."""
        member.record.progress = progress
        with suppress(BackendUnavailable):
            self.ctx.jobs.save(member.record)
        self.ctx.notify(member.record, WebhookEvent.PROGRESS)


def observe(ctx: WorkerContext, group: list[Member], idle_s: float | None) -> None:
    """Count a call's images and jobs, and the GPU's idle time before it (if a job waited)."""
    gpu = ctx.settings.worker_gpu.value
    observe_batch(group[0].spec.app_id, gpu, sum(m.size for m in group), len(group))
    if idle_s is not None:
        observe_gpu_idle(gpu, idle_s)
