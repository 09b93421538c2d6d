"""``GET /metrics`` for Prometheus, the request counters, and the queue gauges.

Under gunicorn (``easel api``) every worker process writes to a shared multiprocess
directory, and whichever process answers a scrape sums them all (shared/metrics.py).
Like ``/health``, ``/metrics`` needs no key: keep it off the public ingress.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from api.services import Services, get_services
from shared.errors import BackendUnavailable
from shared.jobs import key
from shared.metrics import (
    BACKLOG_KEYS,
    HTTP_REQUESTS,
    HTTP_SECONDS,
    JOBS,
    QUEUE_BACKLOG,
    QUEUE_DEPTH,
    scrape_registry,
)
from shared.models import JobRecord

bp = Blueprint("metrics", __name__)


class QueueDepthCollector(Collector):
    """Jobs accepted and not yet started, per GPU class, and waiting per API key, read from
    Redis at scrape time."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterable[Metric]:
        queues = self.services.settings.queues
        pipe = self.services.jobs.redis.pipeline(transaction=False)
        for queue in queues.values():
            pipe.zcard(key("queued", queue))
        try:
            depths = pipe.execute()
        except RedisError:
            return []  # Redis is down: no gauge beats a wrong one, and the scrape still works
        gauge = GaugeMetricFamily(
            QUEUE_DEPTH, "Jobs waiting to start, per GPU class.", labels=["inference_type"]
        )
        for inference_type, depth in zip(queues, depths, strict=True):
            gauge.add_metric([inference_type.value], float(depth))
        try:
            backlog = self.backlog()
        except (RedisError, BackendUnavailable):
            return [gauge]
        return [gauge, backlog]

    def backlog(self) -> GaugeMetricFamily:
        """Jobs waiting in each key's lane: the largest lanes by key id, the rest as
        "other", so that a service with thousands of keys keeps a bounded series count."""
        gauge = GaugeMetricFamily(
            QUEUE_BACKLOG,
            f"Jobs waiting to start per API key id and GPU class ({BACKLOG_KEYS} largest; "
            'the rest summed as key="other").',
            labels=["inference_type", "key"],
        )
        for inference_type, queue in self.services.settings.queues.items():
            lanes = sorted(self.services.jobs.backlog(queue).items(), key=lambda kv: -kv[1])
            for owner, waiting in lanes[:BACKLOG_KEYS]:
                gauge.add_metric([inference_type.value, owner], float(waiting))
            if rest := sum(waiting for _, waiting in lanes[BACKLOG_KEYS:]):
                gauge.add_metric([inference_type.value, "other"], float(rest))
        return gauge


@bp.get("/metrics")
def metrics() -> Response:
    """Every Easel metric of this API, in Prometheus' text format."""
    registry = scrape_registry(QueueDepthCollector(get_services()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def count_job(record: JobRecord) -> None:
    """Count a job reaching ``record.state`` in the API (queued, or canceled while queued)."""
    JOBS.labels(record.state.value, record.app_id, record.inference_type.value).inc()


def _start_timer() -> None:
    g.easel_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    # The route's pattern, not the path, so task ids never become label values.
    endpoint = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    elapsed = time.perf_counter() - g.get("easel_started", time.perf_counter())
    HTTP_REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
    HTTP_SECONDS.labels(request.method, endpoint).observe(elapsed)
    return response


def init_app(app: Flask) -> None:
    """Serve ``/metrics`` and count every request."""
    app.register_blueprint(bp)
    app.before_request(_start_timer)
    app.after_request(_count_request)
