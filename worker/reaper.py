"""The reaper: jobs whose worker died without a word are put back on their queue, or failed.

A worker that is SIGKILLed whole (or loses its machine) leaves its jobs marked running, or
held (queued, waiting in that worker for the GPU, ``worker`` set), and
Redis would hand the unacknowledged message to another worker only after the visibility
timeout (hours). Every worker process runs the reaper from its heartbeat thread; a short Redis
lock lets one of them sweep at a time. A job is reaped when it sits in the running index,
its worker has stopped heartbeating, and its start is older than the staleness window:

- a held job never ran: it goes back to QUEUED and its message is sent again;
- with attempts left, it goes back to QUEUED and its message is sent again (same task id;
  the atomic start lets only one delivery run it, and a stale one finds it ended);
- otherwise it ends FAILED: "worker lost N times".

It also ends the jobs the API recorded but could not confirm on the broker, and could not
take back either (Redis went away between the two): after ``UNPUBLISHED_GRACE_S`` a job
still QUEUED in the unpublished index ends FAILED. Its submit had answered 503, so the
client never counted on it; without this it would sit PENDING, listed and holding an
in-flight slot, for the whole job TTL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.errors import UnknownTask
from shared.jobs import JobStore, WorkerLiveness, key
from shared.models import JobRecord, JobState
from shared.queues import publish_job
from shared.settings import Settings

log = logging.getLogger(__name__)

UNPUBLISHED_GRACE_S = 60.0  # far past a publish's own timeouts and retries


class Reaper:
    """Sweeps one queue's running index; see the module docstring."""

    def __init__(
        self,
        jobs: JobStore,
        settings: Settings,
        send_task: Callable[..., Any],
    ):
        self.jobs = jobs
        self.settings = settings
        self.send_task = send_task
        self.queue = settings.queue_for(settings.worker_gpu)
        self.liveness = WorkerLiveness(jobs.redis, settings.worker_stale_after_s)
        self.interval_s = max(1.0, settings.worker_stale_after_s / 2)
        self._next = 0.0

    def maybe_sweep(self) -> list[str]:
        """Sweep if this process's turn has come and no other process holds the lock."""
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.interval_s
        lock = key("reaper", self.queue)
        if not self.jobs.redis.set(lock, b"1", nx=True, px=int(self.interval_s * 1000)):
            return []
        return self.sweep()

    def sweep(self) -> list[str]:
        """Requeue or fail every orphaned job on this queue; the ids it touched."""
        live = set(self.liveness.live(self.queue))
        stale_before = time.time() - self.settings.worker_stale_after_s
        reaped = []
        for task_id in self.jobs.running(self.queue):
            try:
                record = self.jobs.transition(
                    task_id, lambda r: self._orphan(r, live, stale_before)
                )
            except UnknownTask:
                self.jobs.forget_running(self.queue, task_id)
                continue
            if record is None:
                continue
            reaped.append(task_id)
            if record.state is JobState.QUEUED:
                log.warning("job %s lost its worker; queued again", task_id)
                publish_job(self.send_task, record)
            else:
                log.warning("job %s lost its worker too often; failed", task_id)
                self.jobs.finish(record)
        return reaped + self.sweep_unpublished()

    def sweep_unpublished(self) -> list[str]:
        """End the jobs whose publish was never confirmed; the ids it ended."""
        ended = []
        for task_id in self.jobs.unpublished(self.queue, time.time() - UNPUBLISHED_GRACE_S):
            try:
                record = self.jobs.transition(task_id, _never_queued)
            except UnknownTask:
                record = None
            if record is None:  # gone, or a worker has it after all: not ours to end
                self.jobs.forget_unpublished(self.queue, task_id)
                continue
            log.warning("job %s was recorded but never queued; failed", task_id)
            self.jobs.finish(record)
            ended.append(task_id)
        return ended

    def _orphan(self, record: JobRecord, live: set[str], stale_before: float) -> bool:
        if record.status.is_terminal:
            self.jobs.forget_running(self.queue, record.task_id)
            return False
        if record.worker is None or record.worker in live:
            return False
        if record.state is JobState.QUEUED:  # held, never admitted: it has not run at all
            record.worker = None
            return True
        if record.state not in (JobState.RUNNING, JobState.UPLOADING):
            return False
        if (record.started_at or 0) > stale_before:
            return False
        if record.attempts >= self.settings.max_attempts:
            record.state = JobState.FAILED
            record.error = f"worker lost {record.attempts} times while running this job"
            record.finished_at = time.time()
        else:
            record.state, record.progress, record.worker = JobState.QUEUED, None, None
        return True


def _never_queued(record: JobRecord) -> bool:
    if record.status.is_terminal or record.state is not JobState.QUEUED:
        return False
    record.state = JobState.FAILED
    record.error = "never queued: the job queue was unreachable when it was submitted"
    record.finished_at = time.time()
    return True
