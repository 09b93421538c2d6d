"""Job records, inline input images, completion signals and worker liveness, in Redis.

Keys (all under ``easel:``):
    job:<id>          the JobRecord as JSON, expiring after the job TTL
    input:<id>        the bytes of an image sent as a data URI, deleted when the job ends
    done:<id>         a list the worker pushes to when the job ends; waiters BLPOP it
    workers:<queue>   a sorted set of live worker names, scored by their last heartbeat
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import BackendUnavailable, UnknownTask
from shared.models import JobRecord
from shared.settings import Settings

PREFIX = "easel:"
T = TypeVar("T")


def connect_redis(settings: Settings) -> redis.Redis:
    """A Redis client that fails within the configured timeout instead of hanging."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s + 1.0,  # BLPOP waits up to 1 s on top
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


class JobStore:
    """Reads and writes job records; the one place that knows the key layout."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def create(self, record: JobRecord, image: bytes | None = None) -> None:
        """Store a new job and its inline image atomically."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._job(record.task_id), record.model_dump_json(), ex=self.ttl_s)
        if image is not None:
            pipe.set(self._input(record.task_id), image, ex=self.ttl_s)
        _run(pipe.execute)

    def get(self, task_id: str) -> JobRecord:
        """The record of one job, or UnknownTask."""
        raw = _run(lambda: self.redis.get(self._job(task_id)))
        if raw is None:
            raise UnknownTask(f"task_id: no task {task_id!r}")
        return JobRecord.model_validate_json(raw)

    def save(self, record: JobRecord) -> None:
        """Overwrite a record, keeping its expiry."""
        _run(
            lambda: self.redis.set(
                self._job(record.task_id), record.model_dump_json(), keepttl=True
            )
        )

    def finish(self, record: JobRecord) -> None:
        """Save a terminal record, drop its inline image and wake anyone waiting on it."""
        done = self._done(record.task_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._job(record.task_id), record.model_dump_json(), keepttl=True)
        pipe.delete(self._input(record.task_id))
        pipe.rpush(done, b"1")
        pipe.expire(done, 300)
        _run(pipe.execute)

    def ping(self) -> None:
        """Raise BackendUnavailable unless Redis answers."""
        _run(self.redis.ping)

    def discard(self, task_id: str) -> None:
        """Forget a job that was never accepted (its publish failed)."""
        self.redis.delete(self._job(task_id), self._input(task_id))

    def input_image(self, task_id: str) -> bytes | None:
        """The inline image of a job, if it was sent as a data URI."""
        value = _run(lambda: self.redis.get(self._input(task_id)))
        return value if isinstance(value, bytes) else None

    def wait(self, task_id: str, timeout_s: float) -> JobRecord:
        """Block until the job is terminal or the timeout passes; return its latest record."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.get(task_id)
            remaining = deadline - time.monotonic()
            if record.status.is_terminal or remaining <= 0:
                return record
            # Re-read the record at least once a second, so a lost signal costs at most that.
            wait = max(0.01, min(1.0, remaining))
            _run(partial(self.redis.blpop, [self._done(task_id)], timeout=wait))

    @staticmethod
    def _job(task_id: str) -> str:
        return f"{PREFIX}job:{task_id}"

    @staticmethod
    def _input(task_id: str) -> str:
        return f"{PREFIX}input:{task_id}"

    @staticmethod
    def _done(task_id: str) -> str:
        return f"{PREFIX}done:{task_id}"


class WorkerLiveness:
    """Which workers are alive on which queue, from their heartbeats."""

    def __init__(self, client: redis.Redis, stale_after_s: float) -> None:
        self.redis = client
        self.stale_after_s = stale_after_s

    def beat(self, queue: str, worker: str) -> None:
        """Mark one worker alive now."""
        key = self._key(queue)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {worker: time.time()})
        pipe.zremrangebyscore(key, "-inf", time.time() - self.stale_after_s)
        pipe.execute()

    def leave(self, queue: str, worker: str) -> None:
        """Remove a worker that is shutting down."""
        self.redis.zrem(self._key(queue), worker)

    def live(self, queue: str) -> list[str]:
        """The workers that beat recently on this queue."""
        since = time.time() - self.stale_after_s
        members = _run(lambda: self.redis.zrangebyscore(self._key(queue), since, "+inf"))
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    @staticmethod
    def _key(queue: str) -> str:
        return f"{PREFIX}workers:{queue}"


def _run(call: Callable[[], T]) -> T:
    """Run one Redis call, turning connection trouble into BackendUnavailable."""
    try:
        return call()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailable("Redis is unreachable; try again shortly") from exc
