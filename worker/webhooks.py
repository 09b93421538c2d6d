"""Delivering webhooks: the ``easel webhooks`` Celery worker (no torch, no GPU).

GPU workers and the API only queue deliveries (shared/webhooks.py, which also states the
retry deadlines and the fairness rules). For each message this process:

1. Finds the key that owns the job and its secret (``Deliverer.signer``).
2. Takes a slot of the destination host and of the key, unless the host's circuit is open
   (``Gate``); without one, the message is rescheduled at once, holding no thread.
3. Signs the body with ``standardwebhooks`` and POSTs it through the SSRF guard, within
   ``EASEL_WEBHOOK_TIMEOUT_S`` (``deliver``).
4. Is done, or is rescheduled with backoff until its event's deadline
   (``Deliverer.schedule``), counted per key in Redis (``PendingCount``).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import redis
from celery import Celery, Task, signals
from redis.exceptions import RedisError
from standardwebhooks import Webhook

from shared.errors import BackendUnavailable
from shared.jobs import connect_redis, key
from shared.keys import BOOTSTRAP_ID, KeyStore, NoKeySecret, UnknownKeyId
from shared.logs import configure_logging
from shared.netguard import BlockedURL, GuardedHttp, policy_from
from shared.queues import celery_config, webhook_reprs
from shared.settings import Settings
from shared.webhooks import DELIVER_WEBHOOK_TASK, with_key_id

log = logging.getLogger(__name__)

START_RETRY_FOR_S = 60.0
MAX_TRACKED_HOSTS = 10_000  # failing hosts remembered per process; the oldest go first


def backoff(attempt: int, base_s: float = 1.0, cap_s: float = 600.0) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based)."""
    return float(min(cap_s, base_s * 2**attempt))


def retry_for(event: str, settings: Settings) -> float:
    """How long an event is retried, counted from its first attempt."""
    if event == "progress":
        return 0.0  # progress may drop
    if event == "start":
        return min(START_RETRY_FOR_S, settings.webhook_retry_for_s)
    return settings.webhook_retry_for_s


def host_of(url: str) -> str:
    """The destination that slots and circuits count by: ``host:port``."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url  # the guard refuses it; it still needs a name
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.host}:{port}"


def deliver(
    http: GuardedHttp, signer: Webhook, url: str, msg_id: str, body: str, timeout_s: float
) -> str | None:
    """POST one signed delivery; None when the receiver took it (2xx), else why not."""
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "easel-webhooks",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(msg_id, now, body),
    }
    try:
        with http.stream(
            "POST", url, deadline_s=timeout_s, max_redirects=0, content=body, headers=headers
        ) as (response, _):
            if 200 <= response.status_code < 300:
                return None
            return f"HTTP {response.status_code}"
    except BlockedURL:
        # Its text names the receiver's host; the client saw the reason at submit.
        return "the URL policy refused the receiver"
    except httpx.HTTPError as exc:
        return type(exc).__name__


class Gate:
    """One process's slots per host and per key, and a circuit per host."""

    def __init__(self, share: int, failures: int, cooldown_s: float) -> None:
        self.share = share
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._busy: Counter[str] = Counter()
        self._failed: dict[str, int] = {}  # consecutive failures, most recent last
        self._open_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def enter(self, host: str, key_id: str) -> float | None:
        """Take a slot of the host and one of the key: None, or how long the host's circuit
        stays open (0 when a slot is merely busy)."""
        now = time.monotonic()
        with self._lock:
            closed_for = self._open_until.get(host, now) - now
            if closed_for > 0:
                return closed_for
            slots = (f"host {host}", f"key {key_id}")
            if any(self._busy[slot] >= self.share for slot in slots):
                return 0.0
            self._busy.update(slots)
            return None

    def leave(self, host: str, key_id: str, ok: bool) -> None:
        """Give the slots back; count the attempt toward the host's circuit."""
        with self._lock:
            self._busy.subtract((f"host {host}", f"key {key_id}"))
            self._busy = +self._busy  # forget the zeros
            if ok:
                self._failed.pop(host, None)
                self._open_until.pop(host, None)
                return
            failed = self._failed[host] = self._failed.pop(host, 0) + 1
            if failed >= self.failures:
                self._open_until[host] = time.monotonic() + self.cooldown_s
            if len(self._failed) > MAX_TRACKED_HOSTS:
                oldest = next(iter(self._failed))
                del self._failed[oldest]
                self._open_until.pop(oldest, None)


class PendingCount:
    """Each key's deliveries waiting for a retry, over every deliverer (a sorted set per key
    of message ids by deadline). Best effort: a Redis error counts nothing."""

    def __init__(self, client: redis.Redis, keep_s: float) -> None:
        self.redis = client
        self.keep_s = int(keep_s) + 60

    def hold(self, owner: str, msg_id: str, deadline: float) -> int:
        """Count a delivery as waiting until at most ``deadline``; how many its key has."""
        name = key("webhookpending", owner)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zremrangebyscore(name, "-inf", time.time())
        pipe.zadd(name, {msg_id: deadline})
        pipe.zcard(name)
        pipe.expire(name, self.keep_s)
        try:
            return int(pipe.execute()[2])
        except RedisError:
            return 0

    def release(self, owner: str, msg_id: str) -> None:
        """The delivery is done, or given up."""
        with suppress(RedisError):
            self.redis.zrem(key("webhookpending", owner), msg_id)


@dataclass
class Message:
    """One delivery message, as queued and as each retry carries it along."""

    url: str
    msg_id: str
    body: str
    event: str
    owner: str | None  # None: queued before messages named it; signed as the bootstrap key's
    since: float  # the first attempt, wall clock
    attempts: int = 0  # POSTs made so far (a rescheduled delivery made none)
    held: bool = False  # counted in PendingCount

    @property
    def tenant(self) -> str:
        """Whose slots and pending count this delivery uses."""
        return self.owner or BOOTSTRAP_ID


class Deliverer:
    """Delivers one message per call, or says when to try it again."""

    def __init__(self, settings: Settings, concurrency: int) -> None:
        if settings.webhook_secret is None:
            raise SystemExit("EASEL_WEBHOOK_SECRET is unset; webhooks cannot be signed")
        self.settings = settings
        self.bootstrap = Webhook(settings.webhook_secret.get_secret_value())
        client = connect_redis(settings)
        self.keys = KeyStore(client, settings)
        self.pending = PendingCount(
            client, settings.webhook_retry_for_s + settings.webhook_backoff_cap_s
        )
        self.gate = Gate(
            max(1, concurrency // 4), settings.webhook_host_failures,
            settings.webhook_host_cooldown_s,
        )  # fmt: skip
        self.http = GuardedHttp(policy_from(settings))

    def signer(self, owner: str | None) -> tuple[str, Webhook]:
        """The id and signer of the key that owns a job. An owner that is no stored key is
        the bootstrap key's (api/auth.py), whose secret is ``EASEL_WEBHOOK_SECRET``."""
        if owner is not None:
            with suppress(UnknownKeyId):
                record = self.keys.get(owner)
                return record.id, Webhook(self.keys.webhook_secret(record))
        return BOOTSTRAP_ID, self.bootstrap

    def handle(self, message: Message) -> float | None:
        """Deliver a message: None when done (delivered or given up), else the countdown
        before its next try."""
        try:
            key_id, signer = self.signer(message.owner)
        except (BackendUnavailable, NoKeySecret) as exc:
            return self.schedule(message, str(exc), backoff(message.attempts, *self._backoff))
        host = host_of(message.url)
        closed_for = self.gate.enter(host, message.tenant)
        if closed_for is not None:
            jitter = random.uniform(0.5, 1.5) * self.settings.webhook_backoff_base_s
            return self.schedule(message, None, closed_for + jitter)
        problem: str | None = "the delivery raised"
        try:
            body = with_key_id(message.body, key_id)
            problem = deliver(
                self.http, signer, message.url, message.msg_id, body,
                self.settings.webhook_timeout_s,
            )  # fmt: skip
        finally:
            self.gate.leave(host, message.tenant, ok=problem is None)
        message.attempts += 1
        if problem is None:
            log.info("webhook %s delivered (attempt %d)", message.msg_id, message.attempts)
            self.done(message)
            return None
        return self.schedule(message, problem, backoff(message.attempts - 1, *self._backoff))

    def schedule(self, message: Message, problem: str | None, wait_s: float) -> float | None:
        """The countdown to the next try, at most to the event's deadline; None when the
        deadline has passed or the key has too many waiting (``problem``: None when the
        delivery was only deferred, its host busy or cooling down)."""
        why = problem or "deferred: its host is busy or cooling down"
        now = time.time()
        left = message.since + retry_for(message.event, self.settings) - now
        if left <= 0:
            level = logging.INFO if message.event == "progress" else logging.WARNING
            log.log(level, "webhook %s given up after %d attempts: %s",
                    message.msg_id, message.attempts, why)  # fmt: skip
            self.done(message)
            return None
        waiting = self.pending.hold(message.tenant, message.msg_id, now + left)
        message.held = True
        if waiting > self.settings.webhook_max_pending_per_key:
            if message.event != "completed":
                log.warning("webhook %s dropped: its key has %d deliveries waiting",
                            message.msg_id, waiting)  # fmt: skip
                self.done(message)
                return None
            wait_s = max(wait_s, self.settings.webhook_backoff_cap_s)
        log.log(logging.DEBUG if problem is None else logging.INFO,
                "webhook %s not delivered (%s); next try in %.1f s",
                message.msg_id, why, min(wait_s, left))  # fmt: skip
        return min(wait_s, left)

    def done(self, message: Message) -> None:
        """Stop counting a delivery as waiting."""
        if message.held:
            self.pending.release(message.tenant, message.msg_id)

    @property
    def _backoff(self) -> tuple[float, float]:
        return self.settings.webhook_backoff_base_s, self.settings.webhook_backoff_cap_s


def create_webhook_celery(settings: Settings | None = None, concurrency: int = 16) -> Celery:
    """The Celery app of ``easel webhooks``: one task, on the webhook queue."""
    settings = settings or Settings()
    deliverer = Deliverer(settings, concurrency)
    app = Celery("easel-webhooks", set_as_current=False)
    app.config_from_object(
        {**celery_config(settings), "task_default_queue": settings.webhook_queue}
    )

    def deliver_webhook(
        task: Task[Any, Any], url: str, msg_id: str, body: str, event: str,
        owner: str | None = None, since: float | None = None, attempts: int = 0,
    ) -> None:  # fmt: skip
        """Deliver one event, or queue it again with a countdown (never waiting here)."""
        held = since is not None  # it came back: PendingCount has it
        since = time.time() if since is None else since
        message = Message(url, msg_id, body, event, owner, since, attempts, held)
        countdown = deliverer.handle(message)
        if countdown is None:
            return
        kwargs = {"owner": owner, "since": message.since, "attempts": message.attempts}
        raise task.retry(
            args=[url, msg_id, body, event], kwargs=kwargs, countdown=countdown,
            **webhook_reprs(msg_id, event),  # Celery drops argsrepr on retry
        )  # fmt: skip

    # max_retries=None: no retry limit but the deadline ``Deliverer.schedule`` keeps.
    app.task(name=DELIVER_WEBHOOK_TASK, bind=True, ignore_result=True, max_retries=None)(
        deliver_webhook
    )
    signals.setup_logging.connect(  # Celery then leaves logging to us: JSON lines
        lambda loglevel=None, **_: configure_logging(settings, "webhooks", loglevel), weak=False
    )
    return app


def run_webhook_worker(concurrency: int, loglevel: str) -> None:
    """Consume the webhook queue on a thread pool (deliveries wait on the network)."""
    settings = Settings()
    app = create_webhook_celery(settings, concurrency)
    app.worker_main(
        [
            "worker",
            "--queues",
            settings.webhook_queue,
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"webhooks-{os.getpid()}@%h",
        ]
    )
