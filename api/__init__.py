"""Easel's HTTP API: a thin Flask app that validates, records and queues jobs."""

from __future__ import annotations

from flask import Flask

from shared.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API; settings come from ``EASEL_*`` variables unless given."""
    from api import (
        apps,
        errors,
        health,
        images,
        limits,
        logs,
        metrics,
        openapi,
        playground,
        services,
        tasks,
    )

    settings = settings or Settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    services.init_app(app, settings)
    errors.init_app(app)
    limits.init_app(app, settings, keyed=[images.bp, tasks.bp])
    metrics.init_app(app)
    logs.init_app(app)
    for module in (images, tasks, apps, health, openapi, playground):
        app.register_blueprint(module.bp)
    return app
