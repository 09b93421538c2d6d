"""The reaper: jobs whose worker died without a word are put back on their queue, or failed.

A worker that is SIGKILLed whole (or loses its machine) leaves its jobs marked running, or
held (queued, waiting in that worker for the GPU, ``worker`` set), and
Redis would hand the unacknowledged message to another worker only after the visibility
timeout (hours). Every worker process runs the reaper from its heartbeat thread; a short Redis
lock lets one of them sweep at a time. A job is reaped when it sits in the running index,
its worker has stopped heartbeating, and its start is older than the staleness window:

- a held job never ran: it goes back to the head of its key's lane, with a new turn;
- so does a job a worker popped (claimed) and died before taking;
- with attempts left, a running job goes back the same way (the atomic start lets only
  one worker run it, and a late one finds it ended);
- otherwise it ends FAILED: "worker lost N times".

A live worker can also lose a job: a Redis failover may drop the last writes, so a job's
record can still name a worker that finished it (or dropped it, unable to admit a record
that lost its take). Each heartbeat says which jobs the worker has; a job taken well before
that heartbeat and missing from it is that worker's no longer, and is reaped the same way.
And a waiting job that is in no lane and that no worker has (its lane's write lost) goes
back in its lane, with a turn.

It also reconciles turns with waiting jobs (``reconcile``): a job waits in a lane until a
turn pops it, so a turn lost from the broker (a Redis failover loses the last writes)
would leave a job waiting forever. Turns are interchangeable, so it is enough to count:
when fewer turns are queued, or held by live workers still to pop, than jobs wait, on
two sweeps in a row, it publishes the difference. An extra turn finds no job and costs
one message; a missing one would cost a job.

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
from dataclasses import dataclass
from typing import Any

import redis

from shared.errors import UnknownTask
from shared.jobs import Hands, JobStore, WorkerLiveness, key
from shared.models import JobRecord, JobState
from shared.queues import publish_turn
from shared.settings import Settings

log = logging.getLogger(__name__)

UNPUBLISHED_GRACE_S = 60.0  # far past a publish's own timeouts and retries
# A job popped this close before a worker's heartbeat may be missing from what it said:
# the job's thread counts it in hand just after its pop returns.
HANDS_MARGIN_S = 2.0


class Reaper:
    """Sweeps one queue's running index; see the module docstring."""

    def __init__(
        self,
        jobs: JobStore,
        settings: Settings,
        send_task: Callable[..., Any],
        broker: redis.Redis | None = None,
    ):
        self.jobs = jobs
        self.settings = settings
        self.send_task = send_task
        self.broker = jobs.redis if broker is None else broker  # where Celery's lists are
        self._short_before: int | None = None  # the turns missing at the last sweep
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
        seen = Seen(
            live=live,
            claims=self.jobs.claims(self.queue),
            hands=self.liveness.hands(self.queue, live),
            taken_at=self.jobs.taken_at(self.queue),
            stale_before=time.time() - self.settings.worker_stale_after_s,
        )
        reaped = []
        for task_id in seen.taken_at:
            try:
                record = self.jobs.transition(task_id, lambda r: self._orphan(r, seen))
            except UnknownTask:
                self.jobs.unclaim(self.queue, task_id, ended=True)
                continue
            if record is None:
                continue
            reaped.append(task_id)
            if record.state is JobState.QUEUED:
                log.warning("job %s lost its worker; queued again", task_id)
                publish_turn(self.send_task, self.queue)
            else:
                log.warning("job %s lost its worker too often; failed", task_id)
                self.jobs.finish(record)
        reaped += self.replace_unplaced()
        self.reconcile()
        self.jobs.prune_lanes(self.queue)
        return reaped + self.sweep_unpublished()

    def replace_unplaced(self) -> list[str]:
        """Put back in its lane, with a turn, every waiting job that is in none and that no
        worker has (a failover lost the lane's write); the ids it put back."""
        placed = []
        for task_id in self.jobs.unplaced(self.queue):
            try:
                record = self.jobs.transition(task_id, _unplaced)
            except UnknownTask:
                continue
            if record is not None:
                log.warning("job %s was in no lane; queued again", task_id)
                publish_turn(self.send_task, self.queue)
                placed.append(task_id)
        return placed

    def reconcile(self) -> int:
        """Publish the turns that waiting jobs lack (see the module docstring); how many."""
        waiting = sum(self.jobs.backlog(self.queue).values())
        short = waiting - self.turns() if waiting else 0
        missing = min(short, self._short_before or 0)
        self._short_before = short if short > 0 else None
        if missing <= 0:
            return 0
        log.warning("%d jobs wait on %s without a turn; publishing turns", missing, self.queue)
        publish_turn(self.send_task, self.queue, missing)
        self._short_before = None  # give them a sweep to be seen before counting again
        return missing

    def turns(self) -> int:
        """Turns still to pop a job: in Celery's list, or received by a live worker that
        has not popped with them yet (as its last heartbeat said).

        Not kombu's unacknowledged hash: a turn that popped its job stays there until that
        job ends, and a dead worker's stay for the visibility timeout (hours)."""
        live = set(self.liveness.live(self.queue))
        held = sum(hands.turns for hands in self.liveness.hands(self.queue, live).values())
        return int(self.broker.llen(self.queue)) + held

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

    def _orphan(self, record: JobRecord, seen: Seen) -> bool:
        if record.status.is_terminal:
            self.jobs.unclaim(self.queue, record.task_id, ended=True)
            return False
        if record.worker is None:  # popped and not taken: back to its lane if its worker died
            claimant = seen.claims.get(record.task_id)
            return (
                record.state is JobState.QUEUED
                and claimant is not None
                and not seen.has(claimant, record.task_id)
            )
        forgotten = record.worker in seen.live and not seen.has(record.worker, record.task_id)
        if record.worker in seen.live and not forgotten:
            return False
        if record.state is JobState.QUEUED:  # held, never admitted: it has not run at all
            record.worker = None
            return True
        if record.state not in (JobState.RUNNING, JobState.UPLOADING):
            return False
        if not forgotten and (record.started_at or 0) > seen.stale_before:
            return False
        if record.attempts >= self.settings.max_attempts:
            record.state = JobState.FAILED
            record.error = f"worker lost {record.attempts} times while running this job"
            record.finished_at = time.time()
        else:
            record.state, record.progress, record.worker = JobState.QUEUED, None, None
        return True


@dataclass(frozen=True)
class Seen:
    """What one sweep read of the queue's workers before judging its jobs."""

    live: set[str]
    claims: dict[str, str]  # popped, not taken: job id -> the worker that popped it
    hands: dict[str, Hands]  # worker -> what it said at its last heartbeat
    taken_at: dict[str, float]  # job id -> when a worker popped or took it
    stale_before: float

    def has(self, worker: str, task_id: str) -> bool:
        """Whether ``worker`` may still have the job: it is alive and either said so at its
        last heartbeat, or took the job too recently for that heartbeat to know (or has
        said nothing yet). A live worker that took a job well before its heartbeat and did
        not list it has finished it, and the record saying otherwise lost a write."""
        if worker not in self.live:
            return False
        said = self.hands.get(worker)
        if said is None:
            return True
        at = said.at
        return task_id in said.jobs or self.taken_at.get(task_id, at) > at - HANDS_MARGIN_S


def _unplaced(record: JobRecord) -> bool:
    """The change that puts a waiting job back in its lane (``JobStore._write`` does)."""
    return record.state is JobState.QUEUED and record.worker is None


def _never_queued(record: JobRecord) -> bool:
    if record.status.is_terminal or record.state is not JobState.QUEUED:
        return False
    record.state = JobState.FAILED
    record.error = "never queued: the job queue was unreachable when it was submitted"
    record.finished_at = time.time()
    return True
