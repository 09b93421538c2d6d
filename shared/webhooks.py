"""Webhooks, the contract side: which events a job emits, their payload and their ids.

Deliveries follow the Standard Webhooks spec (https://www.standardwebhooks.com): the body is
``{"type": "task.<event>", "timestamp": ..., "data": <the task's envelope>}`` and the headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` are made by the
``standardwebhooks`` package in worker/webhooks.py, which does the HTTP.

Who publishes: the worker (start, progress, completed) and the API (completed, for a job
canceled while it waited). Publishing only queues a Celery message on the webhook queue, so a
slow or failing receiver never delays a job or a cancel; a separate ``easel webhooks``
process delivers, retrying ``completed`` with backoff for ``EASEL_WEBHOOK_RETRY_FOR_S``.
Progress events are throttled, expire after a minute, and are never retried: they may drop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.models import Envelope, JobRecord, WebhookEvent
from shared.settings import Settings

DELIVER_WEBHOOK_TASK = "easel.deliver_webhook"
PROGRESS_EXPIRES_S = 60

log = logging.getLogger(__name__)


def message_id(task_id: str, event: WebhookEvent, step: int | None = None) -> str:
    """The ``webhook-id``: the same for every retry of one event, so receivers can dedupe."""
    suffix = f"_{step}" if step is not None else ""
    return f"msg_{task_id}_{event.value}{suffix}"


def payload(event: WebhookEvent, envelope: Envelope) -> str:
    """The JSON body of one delivery."""
    return json.dumps(
        {
            "type": f"task.{event.value}",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": envelope.model_dump(mode="json"),
        },
        separators=(",", ":"),
    )


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
        try:
            self.send_task(
                DELIVER_WEBHOOK_TASK,
                args=[
                    record.webhook,
                    message_id(record.task_id, event, step),
                    payload(event, envelope),
                    event.value,
                ],
                queue=self.queue,
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
