"""Waiting for a job to end, cheaply: a sync submit or a long poll costs a socket, not a thread.

The API runs under gunicorn's gevent worker (``easel api``), so a waiting request is a
greenlet. What it waits on is this process's ``CompletionHub``: one Redis connection
subscribed to ``easel:done``, where ``JobStore.finish`` publishes every task id that
ends. The hub wakes the local waiters of that id, and each re-reads its record.

Pub/sub drops what is published while nobody listens, so:
- a waiter registers before it first reads the record (an end between the two still
  wakes it);
- when the subscription is (re)made, every waiter wakes and re-reads;
- a waiter re-reads every ``RECHECK_S`` anyway, a backstop that costs one GET each.

Concurrent waits are capped per key across all API instances (``EASEL_MAX_WAITS_PER_KEY``):
``easel:waits:<owner>`` is a sorted set of wait ids scored by when each wait must be over,
so a wait whose process died leaves by itself.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import redis
from redis.exceptions import RedisError

from shared.errors import TooManyRequests
from shared.jobs import DONE_CHANNEL, JobStore, _run, key
from shared.models import JobRecord

log = logging.getLogger(__name__)
RECHECK_S = 5.0  # a lost wake-up costs a waiter at most this
RESUBSCRIBE_S = 0.5  # first pause while Redis is unreachable, doubling up to the cap
RESUBSCRIBE_CAP_S = 5.0
WAIT_SLACK_S = 5.0  # a wait slot outlives its wait by this much, then expires
WAIT_RETRY_S = 2.0  # Retry-After for a refused wait: waits end within a minute, often sooner

# Atomically: forget waits past their end, refuse past the cap, else add this one.
ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class CompletionHub:
    """This process's subscription to job ends, and the waiters it wakes."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._started = False
        self._failures = 0  # failed subscriptions in a row

    def wait(self, task_id: str, timeout_s: float) -> JobRecord:
        """Block until the job is terminal or the timeout passes; return its latest record."""
        self._ensure_listening()
        event = threading.Event()
        with self._lock:
            self._waiters[task_id].add(event)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                record = self.jobs.get(task_id)
                remaining = deadline - time.monotonic()
                if record.status.is_terminal or remaining <= 0:
                    return record
                event.wait(min(remaining, RECHECK_S))
                event.clear()
        finally:
            with self._lock:
                events = self._waiters[task_id]
                events.discard(event)
                if not events:
                    del self._waiters[task_id]

    @property
    def waiting(self) -> int:
        """How many requests of this process wait now."""
        with self._lock:
            return sum(len(events) for events in self._waiters.values())

    def _ensure_listening(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        # A thread under plain WSGI servers; a greenlet once gevent has patched threading.
        threading.Thread(target=self._listen, name="easel-completions", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                self._subscribe_and_dispatch()
            except RedisError:
                if not self._failures:  # once per outage, not once per attempt
                    log.warning("completion subscription lost; resubscribing")
                self._failures += 1
            self._wake(None)  # whatever ended meanwhile: every waiter re-reads
            doublings = min(max(0, self._failures - 1), 8)
            time.sleep(min(RESUBSCRIBE_S * 2**doublings, RESUBSCRIBE_CAP_S))

    def _subscribe_and_dispatch(self) -> None:
        pubsub = self.jobs.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(DONE_CHANNEL)
            self._failures = 0
            self._wake(None)
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    data = message["data"]
                    self._wake(data.decode() if isinstance(data, bytes) else str(data))
        finally:
            pubsub.close()

    def _wake(self, task_id: str | None) -> None:
        with self._lock:
            if task_id is None:
                events = [e for group in self._waiters.values() for e in group]
            else:
                events = list(self._waiters.get(task_id, ()))
        for event in events:
            event.set()


class WaitCap:
    """At most ``cap`` concurrent waits per key, across every API instance."""

    def __init__(self, client: redis.Redis, cap: int) -> None:
        self.redis = client
        self.cap = cap
        self._acquire = client.register_script(ACQUIRE)

    @contextmanager
    def slot(self, owner: str, timeout_s: float) -> Iterator[None]:
        """Hold one of ``owner``'s wait slots for a wait of up to ``timeout_s``, or raise 429."""
        name, wait_id = key("waits", owner), uuid.uuid4().hex
        now = time.time()
        ends = now + timeout_s + WAIT_SLACK_S
        args: list[str | float] = [now, self.cap, ends, wait_id, int(timeout_s + WAIT_SLACK_S) + 1]
        if not _run(partial(self._acquire, keys=[name], args=args)):
            raise TooManyRequests(
                f"max_waits: this API key already has {self.cap} requests waiting for jobs, "
                "its cap; poll without ?wait=, or submit with celery: true, or retry shortly",
                retry_after_s=WAIT_RETRY_S,
                data={"max_waits": self.cap},
            )
        try:
            yield
        finally:
            try:
                self.redis.zrem(name, wait_id)
            except RedisError:
                log.warning("could not free a wait slot; it expires by itself")
