"""Celery's side of the contract: the task name and the configuration both ends share.

Plain data only, so ``shared`` needs no Celery import; api/ and worker/ each build
their own Celery app from ``celery_config``.
"""

from __future__ import annotations

from typing import Any

from shared.settings import Settings

GENERATE_TASK = "easel.generate"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for producers and workers alike."""
    transport = {
        # A job must outlive its longest run before Redis redelivers it to another worker.
        "visibility_timeout": 6 * 3600,
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }
    return {
        "broker_url": settings.redis_url,
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
        "worker_send_task_events": False,
        "broker_connection_max_retries": 3,
    }
