"""What the API talks to, built once per process and kept on the app."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from celery import Celery
from flask import Flask, current_app

from api.waits import CompletionHub, WaitCap
from shared.jobs import JobStore, WorkerLiveness, connect_redis
from shared.netguard import UrlPolicy, policy_from
from shared.queues import BROKER_DOWN, celery_config
from shared.registry import Registry, load_registry
from shared.settings import Settings
from shared.storage import Storage
from shared.webhooks import WebhookPublisher


@dataclass
class Services:
    settings: Settings
    registry: Registry
    jobs: JobStore
    liveness: WorkerLiveness
    storage: Storage
    celery: Celery
    url_policy: UrlPolicy
    webhooks: WebhookPublisher
    completions: CompletionHub
    wait_cap: WaitCap
    large_bodies: threading.BoundedSemaphore


def init_app(app: Flask, settings: Settings) -> None:
    """Connect the app to Redis, S3 and the Celery broker (lazily; nothing dials yet)."""
    client = connect_redis(settings)
    jobs = JobStore(client, settings.job_ttl_s, settings.fair_share)
    producer = Celery("easel-api", set_as_current=False)
    producer.config_from_object(celery_config(settings))
    app.extensions["easel"] = Services(
        settings=settings,
        registry=load_registry(settings.model_registry),
        jobs=jobs,
        liveness=WorkerLiveness(client, settings.worker_stale_after_s),
        storage=Storage(settings),
        celery=producer,
        url_policy=policy_from(settings),
        webhooks=WebhookPublisher(producer.send_task, settings, BROKER_DOWN),
        completions=CompletionHub(jobs),
        wait_cap=WaitCap(client, settings.max_waits_per_key),
        # Made here, after gevent patched threading: a greenlet waits for its turn.
        large_bodies=threading.BoundedSemaphore(settings.max_large_bodies),
    )


def get_services() -> Services:
    """The services of the app handling this request."""
    services: Services = current_app.extensions["easel"]
    return services
