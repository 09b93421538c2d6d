"""Delivering webhooks: the ``easel webhooks`` Celery worker (no torch, no GPU).

GPU workers and the API only queue deliveries (shared/webhooks.py); this process signs each
one with ``standardwebhooks`` and POSTs it through the SSRF guard, on a thread pool, so a
receiver that hangs holds one thread here for at most ``EASEL_WEBHOOK_TIMEOUT_S``.

Retries, by event:
- ``completed``: backoff 1, 2, 4 ... s capped at 10 min, until ``EASEL_WEBHOOK_RETRY_FOR_S``
  (at least an hour) has passed; the final state must arrive.
- ``start``: a few quick retries (about a minute).
- ``progress``: none; the message also expires, so a backlog of stale progress is dropped.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import httpx
from celery import Celery, Task, signals
from standardwebhooks import Webhook

from shared.logs import configure_logging
from shared.netguard import BlockedURL, GuardedHttp, policy_from
from shared.queues import celery_config
from shared.settings import Settings
from shared.webhooks import DELIVER_WEBHOOK_TASK

log = logging.getLogger(__name__)

BACKOFF_CAP_S = 600.0
START_RETRIES = 6


def backoff(attempt: int, base_s: float = 1.0) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based)."""
    return float(min(BACKOFF_CAP_S, base_s * 2**attempt))


def retries_for(event: str, retry_for_s: float) -> int:
    """How many retries an event gets: enough to cover ``retry_for_s`` for ``completed``."""
    if event == "progress":
        return 0
    if event == "start":
        return START_RETRIES
    attempts, waited = 0, 0.0
    while waited < retry_for_s:
        waited += backoff(attempts)
        attempts += 1
    return attempts


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
    except BlockedURL as exc:
        return str(exc)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def create_webhook_celery(settings: Settings | None = None) -> Celery:
    """The Celery app of ``easel webhooks``: one task, on the webhook queue."""
    settings = settings or Settings()
    if settings.webhook_secret is None:
        raise SystemExit("EASEL_WEBHOOK_SECRET is unset; webhooks cannot be signed")
    app = Celery("easel-webhooks", set_as_current=False)
    app.config_from_object(
        {**celery_config(settings), "task_default_queue": settings.webhook_queue}
    )
    signer = Webhook(settings.webhook_secret.get_secret_value())
    http = GuardedHttp(policy_from(settings))

    def deliver_webhook(task: Task[Any, Any], url: str, msg_id: str, body: str, event: str) -> None:
        """Deliver one event; retry with backoff while it has retries left."""
        problem = deliver(http, signer, url, msg_id, body, settings.webhook_timeout_s)
        if problem is None:
            log.info("webhook %s delivered", msg_id)
            return
        attempt = task.request.retries
        if attempt >= retries_for(event, settings.webhook_retry_for_s):
            log.warning("webhook %s gave up after %d attempts: %s", msg_id, attempt + 1, problem)
            return
        log.info("webhook %s failed (%s); retry %d", msg_id, problem, attempt + 1)
        raise task.retry(countdown=backoff(attempt), max_retries=None)

    app.task(name=DELIVER_WEBHOOK_TASK, bind=True, ignore_result=True)(deliver_webhook)
    signals.setup_logging.connect(  # Celery then leaves logging to us: JSON lines
        lambda loglevel=None, **_: configure_logging(settings, "webhooks", loglevel), weak=False
    )
    return app


def run_webhook_worker(concurrency: int, loglevel: str) -> None:
    """Consume the webhook queue on a thread pool (deliveries wait on the network)."""
    settings = Settings()
    app = create_webhook_celery(settings)
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
