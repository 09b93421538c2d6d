"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.services import get_services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    """Answers while the process lives."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Ready when Redis and S3 answer; also reports live workers per GPU class."""
    services = get_services()
    services.jobs.ping()
    services.storage.check()
    workers = {
        str(kind): len(services.liveness.live(queue))
        for kind, queue in services.settings.queues.items()
    }
    return jsonify({"status": "ready", "redis": "ok", "s3": "ok", "workers": workers})
