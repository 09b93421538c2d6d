"""``GET /list_of_Apps``: the models this deployment serves."""

from __future__ import annotations

from flask import Blueprint, Response

from api.errors import json_response
from api.services import get_services
from shared.models import AppsEnvelope, JobStatus

bp = Blueprint("apps", __name__)


@bp.get("/list_of_Apps")
def list_of_apps() -> Response:
    """Every registered model, with the GPU classes that may run it, in Qolaba's envelope."""
    specs = get_services().registry.specs.values()
    return json_response(
        AppsEnvelope(status=JobStatus.SUCCESS, output=[spec.info() for spec in specs]), 200
    )
