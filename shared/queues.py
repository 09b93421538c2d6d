"""Celery's side of the contract: the task name, the configuration both ends share, and
the one function that publishes a turn.

No Celery import, so ``shared`` stays free of the framework: api/ and worker/ each build
their own Celery app from ``celery_config`` and pass its ``send_task`` to ``publish_turn``.
A message is a *turn*: it names no job. The worker that gets it pops the next job in fair
order across API keys (shared/fairness.py) and reads everything else from that job's
record, the source of truth (Celery's own guidance: pass ids, not state; here not even
the id, since which job runs next is decided when a worker is free, not at submit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from shared.redisconn import broker_transport_options, broker_url
from shared.settings import Settings

GENERATE_TASK = "easel.generate"
# What publishing a Celery message raises while the broker is unreachable.
BROKER_DOWN = (OperationalError, RedisError, OSError)


def publish_turn(send_task: Callable[..., Any], queue: str, count: int = 1) -> None:
    """Put ``count`` turns on a GPU class's queue, one per job put in a lane: the API's
    submit, the reaper's requeue and its reconciler all come here. Raises one of
    ``BROKER_DOWN`` while the broker is away.

    No time limits ride on the message: the worker's threads pool has none to apply, and
    the worker reads the model's limit from its registry (worker/runner.py).
    """
    for _ in range(count):
        send_task(GENERATE_TASK, queue=queue)


def visibility_timeout_s(settings: Settings) -> int:
    """Longer than any job may run (its hard limit), with room to spare."""
    return max(6 * 3600, 2 * settings.job_hard_time_limit_s)


def webhook_reprs(msg_id: str, event: str) -> dict[str, str]:
    """What Flower and Celery's logs show of a webhook delivery's arguments: its message id
    and event, never the receiver's URL or the payload (presigned URLs, the prompt)."""
    return {"argsrepr": f"(<url>, {msg_id!r}, <payload>, {event!r})", "kwargsrepr": "{}"}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for producers and workers alike."""
    transport = {
        # A job must outlive its longest run before Redis redelivers it to another worker.
        "visibility_timeout": visibility_timeout_s(settings),
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        **broker_transport_options(settings),  # Sentinel's master name and passwords
    }
    return {
        "broker_url": broker_url(settings),
        "broker_transport_options": transport,
        "broker_connection_timeout": settings.redis_timeout_s,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # the job record in Redis is the result
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue_for(settings.worker_gpu),
        "task_create_missing_queues": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "worker_hijack_root_logger": False,
        # Losing Redis mid-job: stop the job rather than finish into a void; it is
        # redelivered (acks_late) and the reaper catches what is not.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": False,
        "broker_connection_max_retries": 3,
    }
