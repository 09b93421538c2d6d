"""Job records, their indexes, completion signals, queues and worker liveness, in Redis.

Keys (all under ``easel:``):
    job:<id>           the JobRecord as JSON, expiring after the job TTL
    tomb:<id>          the owner of a job, kept 4x longer, so an expired id says "expired"
    done:<id>          how many times the job ended, kept 5 min: more than once is a
                       duplicate completion, which the fault suite counts
    cancel:<id>        set when the owner cancels a job that has not ended; it expires with
                       the job's record, and goes when the job ends
    queued:<queue>     sorted set of waiting task ids by submit time: queue positions. A job
                       a worker holds while it waits for the GPU (state queued, ``worker``
                       set) is still waiting, so it keeps its place here
    running:<queue>    sorted set of the task ids a worker holds or runs, by when it took
                       them: what the reaper checks
    unpublished:<queue> ids recorded but not yet confirmed on the broker, by submit time: if
                       the API could neither publish nor take the record back, the reaper
                       ends the job FAILED instead of leaving it PENDING for the job TTL
    durations:<queue>  the last run times on a queue, for ETAs
    owner:<owner>      sorted set of an owner's task ids by submit time: listing; entries
                       older than the job TTL are trimmed on every write, and the set
                       expires with its newest job
    inputbytes:<owner> hash of an owner's unfinished inline inputs (task id -> bytes): the
                       per-key input quota; the images themselves are in S3 (inputs/<id>)
    inflight:<owner>   an owner's unfinished task ids: the in-flight cap (shared/keys.py)
    workers:<queue>    sorted set of live worker names, scored by their last heartbeat
    waits:<owner>      an owner's requests waiting for jobs, by when each wait ends (api/waits.py)
    webhookpending:<owner> an owner's webhook deliveries waiting for a retry (worker/webhooks.py)

Channel ``easel:done``: ``finish`` publishes the id of every job that ends; the API's
waiters listen there (api/waits.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import BackendUnavailable, ExpiredTask, UnknownTask
from shared.models import JobRecord, JobState, JobStatus
from shared.settings import Settings

PREFIX = "easel:"
DONE_CHANNEL = f"{PREFIX}done"
DURATIONS_KEPT = 50
DONE_COUNT_S = 300
T = TypeVar("T")

# Set the cancel flag only while the job is unfinished, to expire with its record.
CANCEL_FLAG = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local state = cjson.decode(raw)['state']
if state == 'succeeded' or state == 'failed' or state == 'canceled' then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ttl)
return 1
"""

# Atomically: an owner's unfinished inline inputs plus this one stay within the quota.
INPUT_QUOTA = """
local used = 0
for _, size in ipairs(redis.call('HVALS', KEYS[1])) do used = used + tonumber(size) end
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def connect_redis(settings: Settings) -> redis.Redis:
    """A Redis client that fails within the configured timeout instead of hanging."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def key(kind: str, name: str) -> str:
    """The Redis key of one thing; the single place the layout above is spelled."""
    return f"{PREFIX}{kind}:{name}"


class JobStore:
    """Reads and writes job records and their side indexes."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._cancel = client.register_script(CANCEL_FLAG)
        self._input_quota = client.register_script(INPUT_QUOTA)

    def create(self, record: JobRecord) -> None:
        """Store a new job and its index entries atomically."""
        task_id = record.task_id
        owned = key("owner", record.owner)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(key("job", task_id), record.model_dump_json(), ex=self.ttl_s)
        pipe.set(key("tomb", task_id), record.owner, ex=self.ttl_s * 4)
        pipe.zadd(key("queued", record.queue), {task_id: record.created_at})
        # The owner index forgets what has expired as it grows, not only when listed.
        pipe.zremrangebyscore(owned, "-inf", record.created_at - self.ttl_s)
        pipe.zadd(owned, {task_id: record.created_at})
        pipe.expire(owned, self.ttl_s)
        pipe.zadd(key("unpublished", record.queue), {task_id: record.created_at})
        _run(pipe.execute)

    def reserve_input(self, owner: str, task_id: str, size: int, quota: int) -> bool:
        """Count an inline input against its owner's quota of bytes; False past the quota."""
        args: list[str | int] = [task_id, size, quota, self.ttl_s]
        return bool(_run(partial(self._input_quota, keys=[key("inputbytes", owner)], args=args)))

    def published(self, record: JobRecord) -> None:
        """The broker has the job's message: it is no longer the reaper's to end."""
        _run(partial(self.redis.zrem, key("unpublished", record.queue), record.task_id))

    def unpublished(self, queue: str, before: float) -> list[str]:
        """Ids recorded on ``queue`` before ``before`` whose publish was never confirmed."""
        members = _run(partial(self.redis.zrangebyscore, key("unpublished", queue), 0, before))
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def forget_unpublished(self, queue: str, task_id: str) -> None:
        """Drop an entry of the unpublished index."""
        _run(partial(self.redis.zrem, key("unpublished", queue), task_id))

    def get(self, task_id: str, owner: str | None = None) -> JobRecord:
        """The record of one job, or UnknownTask (ExpiredTask past its retention).

        With ``owner``, only that owner learns that an expired id once existed; anyone
        else gets UnknownTask, as for a live job of someone else's.
        """
        raw = _run(partial(self.redis.get, key("job", task_id)))
        if raw is None:
            tomb = _run(partial(self.redis.get, key("tomb", task_id)))
            if isinstance(tomb, bytes):
                tomb = tomb.decode()
            if tomb is not None and (owner is None or tomb == owner):
                raise ExpiredTask(f"task_id: task {task_id!r} expired and its outputs are gone")
            raise UnknownTask(f"task_id: no task {task_id!r}")
        return JobRecord.model_validate_json(raw)

    def save(self, record: JobRecord) -> None:
        """Overwrite a record, keeping its expiry."""
        _run(
            partial(
                self.redis.set, key("job", record.task_id), record.model_dump_json(), keepttl=True
            )
        )

    def start(self, task_id: str, mark: Callable[[JobRecord], bool]) -> JobRecord | None:
        """Atomically hand a job to a worker if ``mark`` takes it; None if it already ended,
        was canceled, or ``mark`` declines (say, because a live worker still holds it)."""

        def take(record: JobRecord) -> bool:
            return not record.status.is_terminal and mark(record)

        record, taken = self._transition(task_id, take)
        return record if taken else None

    def admit(self, records: list[JobRecord], mark: Callable[[JobRecord], None]) -> list[JobRecord]:
        """Move held jobs to running in one transaction, applying ``mark`` to the records
        given; those that ended meanwhile (canceled while they waited) are left out."""
        return _run(partial(self._admit, records, mark))

    def _admit(
        self, records: list[JobRecord], mark: Callable[[JobRecord], None]
    ) -> list[JobRecord]:
        names = [key("job", r.task_id) for r in records]
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*names)  # type: ignore[no-untyped-call]
                    stored = pipe.mget(names)
                    pairs = zip(records, stored, strict=True)
                    admitted = [r for r, raw in pairs if _held_by(raw, r.worker)]
                    pipe.multi()
                    for record in admitted:
                        mark(record)
                        self._write(pipe, record)
                    pipe.execute()
                    return admitted
                except redis.WatchError:
                    continue

    def transition(self, task_id: str, change: Callable[[JobRecord], bool]) -> JobRecord | None:
        """Apply ``change`` atomically; the new record, or None if ``change`` declined."""
        record, changed = self._transition(task_id, change)
        return record if changed else None

    def running(self, queue: str) -> list[str]:
        """Ids of the jobs that a worker took from this queue and has not finished."""
        members = _run(partial(self.redis.zrange, key("running", queue), 0, -1))
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def forget_running(self, queue: str, task_id: str) -> None:
        """Drop a stale entry of the running index."""
        _run(partial(self.redis.zrem, key("running", queue), task_id))

    def finish(self, record: JobRecord) -> None:
        """Save a terminal record, free what it held and wake anyone waiting on it."""
        pipe = self.redis.pipeline(transaction=True)
        self._finish_writes(pipe, record)
        _run(pipe.execute)

    def finish_unless_ended(self, record: JobRecord) -> bool:
        """``finish``, unless the stored record has already ended: a job its owner canceled
        while a worker held it must stay canceled. Whether it wrote."""
        return _run(partial(self._finish_unless_ended, record))

    def _finish_unless_ended(self, record: JobRecord) -> bool:
        job = key("job", record.task_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(job)  # type: ignore[no-untyped-call]
                    raw = pipe.get(job)
                    if raw is not None and JobRecord.model_validate_json(raw).status.is_terminal:
                        return False
                    pipe.multi()
                    self._finish_writes(pipe, record)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    @staticmethod
    def _finish_writes(pipe: Any, record: JobRecord) -> None:
        """Queue what ending a job writes: the record, its indexes, the wake-up."""
        task_id = record.task_id
        pipe.set(key("job", task_id), record.model_dump_json(), keepttl=True)
        pipe.delete(key("cancel", task_id))
        pipe.zrem(key("queued", record.queue), task_id)
        pipe.zrem(key("inflight", record.owner), task_id)  # its cap slot: shared/keys.py
        pipe.hdel(key("inputbytes", record.owner), task_id)
        pipe.zrem(key("running", record.queue), task_id)
        pipe.zrem(key("unpublished", record.queue), task_id)
        pipe.incr(key("done", task_id))
        pipe.expire(key("done", task_id), DONE_COUNT_S)
        pipe.publish(DONE_CHANNEL, task_id)
        if record.state is JobState.SUCCEEDED and record.started_at and record.finished_at:
            durations = key("durations", record.queue)
            pipe.lpush(durations, round(record.finished_at - record.started_at, 3))
            pipe.ltrim(durations, 0, DURATIONS_KEPT - 1)

    def cancel(self, task_id: str) -> JobRecord:
        """Cancel a job: a waiting one ends now; a running one stops at its next step."""
        # The flag lives no longer than the record, and not at all once the job has ended.
        flag = partial(self._cancel, keys=[key("job", task_id), key("cancel", task_id)])
        _run(flag)

        def cancel_waiting(record: JobRecord) -> bool:
            if record.state is not JobState.QUEUED:
                return False  # running: the worker sees the flag; ended: nothing to do
            record.state, record.error = JobState.CANCELED, "canceled by the client"
            record.finished_at = time.time()
            return True

        record, canceled = self._transition(task_id, cancel_waiting)
        if canceled:
            self.finish(record)
        return record

    def _transition(
        self, task_id: str, change: Callable[[JobRecord], bool]
    ) -> tuple[JobRecord, bool]:
        """Apply ``change`` to a waiting job's record atomically (WATCH/MULTI), taking it off
        its queue; ``change`` returns False to leave the record as it is."""
        job = key("job", task_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(job)  # type: ignore[no-untyped-call]
                    raw = pipe.get(job)
                    if raw is None:
                        return self.get(task_id), False  # raises UnknownTask or ExpiredTask
                    record = JobRecord.model_validate_json(raw)
                    if not change(record):
                        return record, False
                    pipe.multi()
                    self._write(pipe, record)
                    pipe.execute()
                    return record, True
                except redis.WatchError:
                    continue  # someone else changed it meanwhile; read it again

    @staticmethod
    def _write(pipe: Any, record: JobRecord) -> None:
        """Queue the writes of a changed, unfinished record and of its queue indexes."""
        task_id, queue = record.task_id, record.queue
        pipe.set(key("job", task_id), record.model_dump_json(), keepttl=True)
        if record.state is JobState.QUEUED:  # on the broker, or held by a worker
            pipe.zadd(key("queued", queue), {task_id: record.created_at})
            if record.worker is None:  # put back by the reaper
                pipe.zrem(key("running", queue), task_id)
            else:
                pipe.zadd(key("running", queue), {task_id: time.time()})
        else:
            pipe.zrem(key("queued", queue), task_id)
            if record.state is JobState.RUNNING:
                pipe.zadd(key("running", queue), {task_id: time.time()})

    def cancel_requested(self, task_id: str) -> bool:
        """Whether the owner asked to cancel this job."""
        return bool(_run(partial(self.redis.exists, key("cancel", task_id))))

    def canceled_among(self, task_ids: list[str]) -> set[str]:
        """Which of these jobs their owners asked to cancel, in one round trip."""
        if not task_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(key("cancel", task_id))
        flags = _run(pipe.execute)
        return {task_id for task_id, flag in zip(task_ids, flags, strict=True) if flag}

    def queue_snapshot(
        self, record: JobRecord, stale_after_s: float
    ) -> tuple[int | None, float | None, int]:
        """In one round trip: the job's queue position (None once it left the queue), the
        mean run time of recent jobs on its queue, and how many workers serve the queue."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrank(key("queued", record.queue), record.task_id)
        pipe.lrange(key("durations", record.queue), 0, -1)
        pipe.zcount(key("workers", record.queue), time.time() - stale_after_s, "+inf")
        rank, durations, workers = _run(pipe.execute)
        mean = sum(float(v) for v in durations) / len(durations) if durations else None
        return (None if rank is None else int(rank) + 1), mean, int(workers)

    def owned(
        self, owner: str, status: JobStatus | None, limit: int, before: float | None
    ) -> tuple[list[JobRecord], float | None]:
        """An owner's jobs, newest first, older than ``before``; and the next cursor."""
        found: list[JobRecord] = []
        index = key("owner", owner)
        upper: float | str = f"({before}" if before is not None else "+inf"
        while len(found) < limit:
            page = cast(
                list[tuple[bytes, float]],
                _run(partial(self.redis.zrevrangebyscore, index, upper, "-inf", 0, 100, True)),
            )
            if not page:
                return found, None
            for task_id, score in page:
                upper = f"({score}"
                try:
                    record = self.get(task_id.decode())
                except UnknownTask:
                    self.redis.zrem(index, task_id)  # expired: prune lazily
                    continue
                if status is None or record.status is status:
                    found.append(record)
                    if len(found) == limit:
                        return found, score
        return found, None

    def ping(self) -> None:
        """Raise BackendUnavailable unless Redis answers."""
        _run(self.redis.ping)

    def discard(self, record: JobRecord) -> None:
        """Forget a job that was never accepted (its publish failed)."""
        task_id = record.task_id
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key("job", task_id), key("tomb", task_id))
        pipe.zrem(key("queued", record.queue), task_id)
        pipe.zrem(key("inflight", record.owner), task_id)
        pipe.hdel(key("inputbytes", record.owner), task_id)
        pipe.zrem(key("owner", record.owner), task_id)
        pipe.zrem(key("unpublished", record.queue), task_id)
        pipe.execute()


def _held_by(raw: bytes | str | None, worker: str | None) -> bool:
    """Whether a stored record still waits in ``worker``'s hands: not canceled, ended,
    expired, or put back by the reaper (which takes it from a worker it thinks dead)."""
    if raw is None:
        return False
    record = JobRecord.model_validate_json(raw)
    return record.state is JobState.QUEUED and record.worker == worker


class WorkerLiveness:
    """Which workers are alive on which queue, from their heartbeats."""

    def __init__(self, client: redis.Redis, stale_after_s: float) -> None:
        self.redis = client
        self.stale_after_s = stale_after_s
        self._served_at: dict[str, float] = {}

    def served(self, queue: str, fresh_s: float = 1.0) -> bool:
        """Whether any worker is live on ``queue``; a yes is trusted for ``fresh_s``.

        Heartbeats go stale over ``stale_after_s`` (seconds) anyway, so a second-old yes
        changes nothing, and it spares every submit a round trip under load. A no is
        always asked again, so a worker that just started is seen at once.
        """
        now = time.monotonic()
        if now - self._served_at.get(queue, float("-inf")) < fresh_s:
            return True
        if self.live(queue):
            self._served_at[queue] = now
            return True
        return False

    def beat(self, queue: str, worker: str) -> None:
        """Mark one worker alive now."""
        live = key("workers", queue)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(live, {worker: time.time()})
        pipe.zremrangebyscore(live, "-inf", time.time() - self.stale_after_s)
        pipe.execute()

    def leave(self, queue: str, worker: str) -> None:
        """Remove a worker that is shutting down."""
        self.redis.zrem(key("workers", queue), worker)

    def live(self, queue: str) -> list[str]:
        """The workers that beat recently on this queue."""
        since = time.time() - self.stale_after_s
        members = _run(partial(self.redis.zrangebyscore, key("workers", queue), since, "+inf"))
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


def _run(call: Callable[[], T]) -> T:
    """Run one Redis call, turning connection trouble into BackendUnavailable."""
    try:
        return call()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailable("Redis is unreachable; try again shortly") from exc
