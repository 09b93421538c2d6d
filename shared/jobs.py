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
    running:<queue>    sorted set of the task ids a worker popped, holds or runs, by when it
                       took them: what the reaper checks
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
    hands:<queue>      hash of worker name -> the jobs it had at its last heartbeat (JSON)
    waits:<owner>      an owner's requests waiting for jobs, by when each wait ends (api/waits.py)
    lanes:, lane:, lanestate:, claims:, held:<queue>
                       who starts next: the fair order across keys (shared/fairness.py)
    webhookpending:<owner> an owner's webhook deliveries waiting for a retry (worker/webhooks.py)

Channel ``easel:done``: ``finish`` publishes the id of every job that ends; the API's
waiters listen there (api/waits.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import redis

from shared import fairness
from shared.errors import BackendUnavailable, ExpiredTask, UnknownTask
from shared.models import JobRecord, JobState, JobStatus
from shared.redisconn import redis_client
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
    """A Redis client that fails within the configured timeout instead of hanging, and
    follows the primary through a failover (Sentinel or managed: shared/redisconn.py)."""
    return redis_client(settings)


def key(kind: str, name: str) -> str:
    """The Redis key of one thing; the single place the layout above is spelled."""
    return f"{PREFIX}{kind}:{name}"


class JobStore:
    """Reads and writes job records and their side indexes."""

    def __init__(self, client: redis.Redis, ttl_s: int, fair: bool = True) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.fair = fair  # False: one FIFO lane per GPU class, the benchmarks' baseline
        self._cancel = client.register_script(CANCEL_FLAG)
        self._input_quota = client.register_script(INPUT_QUOTA)
        self._push = client.register_script(fairness.PUSH)
        self._pop = client.register_script(fairness.POP)
        self._remove = client.register_script(fairness.REMOVE)
        self._snapshot = client.register_script(fairness.SNAPSHOT)
        self._unplaced = client.register_script(fairness.UNPLACED)
        self._prune = client.register_script(fairness.PRUNE)

    def lane_of(self, record: JobRecord) -> str:
        """The lane a job waits in: its owner's, or the one FIFO lane."""
        return record.owner if self.fair else fairness.FIFO_LANE

    def create(self, record: JobRecord, weight: int | None = None) -> None:
        """Store a new job and its index entries atomically; with its key's ``weight``, also
        put it in its lane, where a turn can take it (the API's submit)."""
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
        if weight is not None:
            self._enqueue(pipe, record, str(fairness.stride(weight)), at_head=False)
        _run(pipe.execute)

    def _enqueue(self, pipe: Any, record: JobRecord, stride: str, at_head: bool) -> None:
        """Queue the push of a job into its lane (``stride`` '' keeps the lane's)."""
        lane = self.lane_of(record)
        keys = [key("lanes", record.queue), key("lane", f"{record.queue}:{lane}")]
        keys.append(key("lanestate", record.queue))
        args = [lane, record.task_id, stride, "1" if at_head else "0"]
        self._push(keys=keys, args=args, client=pipe)

    def _dequeue(self, pipe: Any, record: JobRecord) -> None:
        """Queue taking a waiting job out of its lane (canceled, failed, or discarded)."""
        lane = self.lane_of(record)
        keys = [key("lanes", record.queue), key("lane", f"{record.queue}:{lane}")]
        keys.append(key("lanestate", record.queue))
        self._remove(keys=keys, args=[lane, record.task_id], client=pipe)

    def pop(self, queue: str, worker: str) -> str | None:
        """Claim the next job in fair order for ``worker`` (a worker's turn); None if no job
        waits. The worker then takes it with ``start``; until it does, the claim lets the
        reaper put the job back if the worker dies."""
        keys = [key("lanes", queue), key("lanestate", queue), key("running", queue)]
        keys += [key("claims", queue), key("held", queue)]
        args: list[str | float] = [key("lane", f"{queue}:"), time.time(), worker]
        args.append(fairness.STRIDE_UNIT)
        popped = _run(partial(self._pop, keys=keys, args=args))
        return None if popped is None else _text(popped)

    def claims(self, queue: str) -> dict[str, str]:
        """The jobs popped and not yet taken, each with the worker that popped it."""
        found = _run(partial(self.redis.hgetall, key("claims", queue)))
        return {_text(k): _text(v) for k, v in found.items()}

    def unclaim(self, queue: str, task_id: str, ended: bool) -> None:
        """Drop a claim its worker will not act on: the job ended already (``ended``), or
        another live worker holds it, whose own index entries stay."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(key("claims", queue), task_id)
        if ended:
            pipe.zrem(key("running", queue), task_id)
            pipe.zrem(key("held", queue), task_id)
        _run(pipe.execute)

    def taken_at(self, queue: str) -> dict[str, float]:
        """When each job on the running index was popped or taken."""
        found = cast(
            list[tuple[bytes, float]],
            _run(partial(self.redis.zrange, key("running", queue), 0, -1, withscores=True)),
        )
        return {_text(task_id): float(at) for task_id, at in found}

    def unplaced(self, queue: str) -> list[str]:
        """Waiting jobs that are in no lane and that no worker popped, holds or runs: what a
        failover leaves when it loses a lane's write but not the job's record. (A record
        made without a weight, as tests do, is one too.)"""
        keys = [key("queued", queue), key("lanes", queue), key("claims", queue)]
        keys.append(key("running", queue))
        found = _run(partial(self._unplaced, keys=keys, args=[key("lane", f"{queue}:")]))
        return [_text(task_id) for task_id in found]

    def prune_lanes(self, queue: str) -> int:
        """Forget emptied lanes' state that can no longer change the order; how many."""
        keys = [key("lanestate", queue), key("lanes", queue)]
        return int(_run(partial(self._prune, keys=keys)))

    def backlog(self, queue: str) -> dict[str, int]:
        """How many jobs wait in each key's lane on ``queue``."""
        found = cast(list[bytes], _run(partial(self.redis.zrange, key("lanes", queue), 0, -1)))
        owners = [_text(owner) for owner in found]
        pipe = self.redis.pipeline(transaction=False)
        for owner in owners:
            pipe.llen(key("lane", f"{queue}:{owner}"))
        return dict(zip(owners, (int(n) for n in _run(pipe.execute)), strict=True))

    def reserve_input(self, owner: str, task_id: str, size: int, quota: int) -> bool:
        """Count an inline input against its owner's quota of bytes; False past the quota."""
        args: list[str | int] = [task_id, size, quota, self.ttl_s]
        return bool(_run(partial(self._input_quota, keys=[key("inputbytes", owner)], args=args)))

    def published(self, record: JobRecord, replicas: int = 0, timeout_ms: int = 0) -> bool:
        """The broker has the job's turn: it is no longer the reaper's to end. With
        ``replicas``, also wait (Redis WAIT, at most ``timeout_ms``) until that many
        replicas hold every write so far, the job's included; whether they did.

        WAIT counts this connection's last write, so it rides in one pipeline with it; the
        replication stream is ordered, so the record, its lane and the turn (written before,
        on other connections) are confirmed with it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(key("unpublished", record.queue), record.task_id)
        if replicas:
            pipe.wait(replicas, timeout_ms)
        answers = _run(pipe.execute)
        return not replicas or int(answers[-1]) >= replicas

    def take_back(self, record: JobRecord) -> bool:
        """Forget a job that was recorded and queued but cannot be accepted (its replicas
        did not confirm it), unless a worker took it meanwhile; whether it was forgotten."""

        # A worker that has it runs it, so it stands.
        def taken(stored: JobRecord | None) -> bool:
            return stored is not None and stored.worker is not None

        return _run(partial(self._write_unless, record, taken, self._discard_writes))

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

    def finish(self, record: JobRecord) -> None:
        """Save a terminal record, free what it held and wake anyone waiting on it."""
        pipe = self.redis.pipeline(transaction=True)
        self._finish_writes(pipe, record)
        _run(pipe.execute)

    def finish_unless_ended(self, record: JobRecord) -> bool:
        """``finish``, unless the stored record has already ended: a job its owner canceled
        while a worker held it must stay canceled. Whether it wrote."""

        def ended(stored: JobRecord | None) -> bool:
            return stored is not None and stored.status.is_terminal

        return _run(partial(self._write_unless, record, ended, self._finish_writes))

    def _write_unless(
        self,
        record: JobRecord,
        refuse: Callable[[JobRecord | None], bool],
        writes: Callable[[Any, JobRecord], None],
    ) -> bool:
        """Queue ``writes`` for ``record`` in one transaction, unless ``refuse`` says no to
        the stored record (None: there is none), read under WATCH; whether it wrote."""
        job = key("job", record.task_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(job)  # type: ignore[no-untyped-call]
                    raw = pipe.get(job)
                    if refuse(None if raw is None else JobRecord.model_validate_json(raw)):
                        return False
                    pipe.multi()
                    writes(pipe, record)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # it changed meanwhile; read it again

    def _finish_writes(self, pipe: Any, record: JobRecord) -> None:
        """Queue what ending a job writes: the record, its indexes, the wake-up."""
        task_id = record.task_id
        if record.worker is None:  # it never left its lane: canceled, or never queued
            self._dequeue(pipe, record)
        pipe.zrem(key("held", record.queue), task_id)
        pipe.hdel(key("claims", record.queue), task_id)
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

    def _write(self, pipe: Any, record: JobRecord) -> None:
        """Queue the writes of a changed, unfinished record and of its queue indexes."""
        task_id, queue = record.task_id, record.queue
        pipe.set(key("job", task_id), record.model_dump_json(), keepttl=True)
        pipe.hdel(key("claims", queue), task_id)  # taken, put back or ended: no claim left
        if record.state is JobState.QUEUED:  # in its lane, or held by a worker
            pipe.zadd(key("queued", queue), {task_id: record.created_at})
            if record.worker is None:  # put back by the reaper: first in its lane again
                pipe.zrem(key("running", queue), task_id)
                pipe.zrem(key("held", queue), task_id)
                self._enqueue(pipe, record, "", at_head=True)
            else:
                pipe.zadd(key("running", queue), {task_id: time.time()})
                pipe.zadd(key("held", queue), {task_id: time.time()}, nx=True)
        else:
            pipe.zrem(key("queued", queue), task_id)
            pipe.zrem(key("held", queue), task_id)
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
        mean run time of recent jobs on its queue, and how many workers serve the queue.

        The position is one more than the number of jobs that start before this one if no
        job arrives meanwhile: the jobs workers hold (they start first, in the order they
        were taken), then the waiting jobs ahead of it in fair order (shared/fairness.py).
        """
        queue, lane = record.queue, self.lane_of(record)
        keys = [key("lanes", queue), key("lanestate", queue), key("held", queue)]
        keys.append(key("lane", f"{queue}:{lane}"))
        pipe = self.redis.pipeline(transaction=False)
        self._snapshot(keys=keys, args=[key("lane", f"{queue}:"), record.task_id], client=pipe)
        pipe.zrank(key("held", queue), record.task_id)
        pipe.lrange(key("durations", queue), 0, -1)
        pipe.zcount(key("workers", queue), time.time() - stale_after_s, "+inf")
        snapshot, held_rank, durations, workers = _run(pipe.execute)
        mean = sum(float(v) for v in durations) / len(durations) if durations else None
        index, held, lanes = fairness.parse_snapshot(snapshot)
        position: int | None = None
        if index is not None:
            position = held + fairness.started_before(lanes, lane.encode(), index) + 1
        elif held_rank is not None:
            position = int(held_rank) + 1
        return position, mean, int(workers)

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
        pipe = self.redis.pipeline(transaction=True)
        self._discard_writes(pipe, record)
        pipe.execute()

    def _discard_writes(self, pipe: Any, record: JobRecord) -> None:
        """Queue what forgetting a job writes: the record, its lane entry and indexes."""
        task_id = record.task_id
        self._dequeue(pipe, record)
        pipe.zrem(key("held", record.queue), task_id)
        pipe.hdel(key("claims", record.queue), task_id)
        pipe.delete(key("job", task_id), key("tomb", task_id))
        pipe.zrem(key("queued", record.queue), task_id)
        pipe.zrem(key("inflight", record.owner), task_id)
        pipe.hdel(key("inputbytes", record.owner), task_id)
        pipe.zrem(key("owner", record.owner), task_id)
        pipe.zrem(key("unpublished", record.queue), task_id)
        pipe.zrem(key("running", record.queue), task_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _held_by(raw: bytes | str | None, worker: str | None) -> bool:
    """Whether a stored record still waits in ``worker``'s hands: not canceled, ended,
    expired, or put back by the reaper (which takes it from a worker it thinks dead)."""
    if raw is None:
        return False
    record = JobRecord.model_validate_json(raw)
    return record.state is JobState.QUEUED and record.worker == worker


@dataclass(frozen=True)
class Hands:
    """What a worker said at its last heartbeat: when, the jobs it had, and the turns it
    held without having popped with them yet."""

    at: float
    jobs: frozenset[str]
    turns: int


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

    def beat(
        self, queue: str, worker: str, in_hand: list[str] | None = None, turns: int = 0
    ) -> None:
        """Mark one worker alive now; with ``in_hand``, also say which jobs it has (popped,
        held or running) as of now, so the reaper can tell a job whose final write a
        failover lost (its record names a live worker that no longer has it), and how many
        ``turns`` it received and has not used to pop yet (waiting for its warm-up)."""
        live, now = key("workers", queue), time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(live, {worker: now})
        pipe.zremrangebyscore(live, "-inf", now - self.stale_after_s)
        if in_hand is not None:
            snapshot = json.dumps({"at": now, "jobs": in_hand, "turns": turns})
            pipe.hset(key("hands", queue), worker, snapshot)
        pipe.execute()

    def leave(self, queue: str, worker: str) -> None:
        """Remove a worker that is shutting down."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(key("workers", queue), worker)
        pipe.hdel(key("hands", queue), worker)
        pipe.execute()

    def hands(self, queue: str, workers: set[str]) -> dict[str, Hands]:
        """What each of ``workers`` last said it has."""
        found = self.redis.hgetall(key("hands", queue))
        stale = [name for name in found if _text(name) not in workers]
        if stale:
            self.redis.hdel(key("hands", queue), *stale)  # workers gone for good
        snapshots = {_text(k): json.loads(v) for k, v in found.items() if _text(k) in workers}
        return {
            name: Hands(float(s["at"]), frozenset(s["jobs"]), int(s.get("turns", 0)))
            for name, s in snapshots.items()
        }

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
