"""Webhooks, the contract side: which events a job emits, their payload and their ids.

Deliveries follow the Standard Webhooks spec (https://www.standardwebhooks.com): the body is
``{"type": "task.<event>", "key_id": ..., "timestamp": ..., "data": <the task's envelope>}``
and the headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` are made by
the ``standardwebhooks`` package in worker/webhooks.py, which does the HTTP.

Who signs: the API key that owns the job, with its own secret (shared/keys.py); the
bootstrap key's secret is ``EASEL_WEBHOOK_SECRET``. The message names only the job's owner;
the deliverer finds the key, adds ``key_id`` to the body and signs. No secret ever travels
through the broker.

Who publishes: the worker (start, progress, completed) and the API (completed, for a job
canceled while it waited). Publishing only queues a Celery message on the webhook queue, so a
slow or failing receiver never delays a job or a cancel; a separate ``easel webhooks``
process delivers.

Retries: each event has a deadline counted from its first attempt: ``completed``
``EASEL_WEBHOOK_RETRY_FOR_S``, ``start`` a minute, ``progress`` none (progress may drop; it
also expires from the queue after a minute). Retry n waits
``EASEL_WEBHOOK_BACKOFF_BASE_S * 2**n``, at most ``EASEL_WEBHOOK_BACKOFF_CAP_S``; the last
one is moved to the deadline itself. Celery's own retry limit plays no part.

Fairness: one destination must not hold up another key's deliveries. In each deliverer
process, on its thread pool of ``--concurrency`` threads:

- At most a quarter of the threads (at least one) deliver to one host (``host:port``) at
  once, and at most a quarter for one key, whatever hosts it names. A delivery that finds
  no free slot does not wait for one: it is rescheduled a moment later (a Celery countdown,
  which holds no thread), or dropped if it is a progress event.
- A host that fails ``EASEL_WEBHOOK_HOST_FAILURES`` deliveries in a row (a non-2xx answer, a
  refused connection, or no answer within ``EASEL_WEBHOOK_TIMEOUT_S``) gets none for
  ``EASEL_WEBHOOK_HOST_COOLDOWN_S``: its deliveries are rescheduled to the end of the
  cool-down without a thread or a connection. After it, one failure opens it again, one
  success closes it.
- Deliveries waiting for a retry are counted per key in Redis (``webhookpending:<key>``,
  expiring). Past ``EASEL_WEBHOOK_MAX_PENDING_PER_KEY``, a ``start`` that fails is dropped
  and a ``completed`` that fails waits the backoff cap before its next try; ``completed`` is
  never dropped before its deadline. Progress is never held, so it never counts.

So a receiver that hangs costs its key at most a quarter of the threads, for at most
``EASEL_WEBHOOK_HOST_FAILURES`` timeouts in a row, and every other key keeps the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.models import Envelope, JobRecord, WebhookEvent
from shared.queues import webhook_reprs
from shared.settings import Settings

DELIVER_WEBHOOK_TASK = "easel.deliver_webhook"
PROGRESS_EXPIRES_S = 60

log = logging.getLogger(__name__)


def message_id(task_id: str, event: WebhookEvent, step: int | None = None) -> str:
    """The ``webhook-id``: the same for every retry of one event, so receivers can dedupe."""
    suffix = f"_{step}" if step is not None else ""
    return f"msg_{task_id}_{event.value}{suffix}"


def payload(event: WebhookEvent, envelope: Envelope) -> str:
    """The JSON body of one delivery, as queued: the deliverer adds the key (``with_key_id``)."""
    return json.dumps(
        {
            "type": f"task.{event.value}",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": envelope.model_dump(mode="json"),
        },
        separators=(",", ":"),
    )


def with_key_id(body: str, key_id: str) -> str:
    """The body as delivered: ``key_id`` names the API key whose secret signs it."""
    event = json.loads(body)
    event.pop("key_id", None)  # only the deliverer names the key
    return json.dumps({"type": event.pop("type"), "key_id": key_id, **event}, separators=(",", ":"))


class WebhookPublisher:
    """Queues deliveries for a job's webhook; never raises into the job."""

    def __init__(
        self,
        send_task: Callable[..., Any],
        settings: Settings,
        unreachable: tuple[type[Exception], ...] = (OSError,),
    ) -> None:
        """``unreachable``: what ``send_task`` raises when the broker is down (the caller's
        Celery knows; shared/ imports no framework). Those are logged, never raised."""
        self.send_task = send_task
        self.unreachable = unreachable
        self.queue = settings.webhook_queue
        self.progress_interval_s = settings.webhook_progress_interval_s
        self._last_progress: dict[str, float] = {}

    def publish(self, record: JobRecord, event: WebhookEvent, envelope: Envelope) -> bool:
        """Queue one event if the job asked for it; False when skipped or the queue is down."""
        if record.webhook is None or event not in record.webhook_events:
            return False
        step = None
        options: dict[str, Any] = {}
        if event is WebhookEvent.PROGRESS:
            if not self._progress_due(record.task_id):
                return False
            step = record.progress.step if record.progress else 0
            options["expires"] = PROGRESS_EXPIRES_S
        elif event is WebhookEvent.COMPLETED:
            self._last_progress.pop(record.task_id, None)
        msg_id = message_id(record.task_id, event, step)
        try:
            self.send_task(
                DELIVER_WEBHOOK_TASK,
                args=[record.webhook, msg_id, payload(event, envelope), event.value],
                kwargs={"owner": record.owner},  # the deliverer finds the key, and its secret
                queue=self.queue,
                **webhook_reprs(msg_id, event.value),  # never the URL or the payload in logs
                **options,
            )
        except self.unreachable as exc:
            log.warning("could not queue the %s webhook of %s: %s", event, record.task_id, exc)
            return False
        return True

    def _progress_due(self, task_id: str) -> bool:
        now = time.monotonic()
        if now - self._last_progress.get(task_id, float("-inf")) < self.progress_interval_s:
            return False
        self._last_progress[task_id] = now
        return True
