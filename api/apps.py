"""``GET /list_of_Apps``: the models this deployment serves."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.services import get_services

bp = Blueprint("apps", __name__)


@bp.get("/list_of_Apps")
def list_of_apps() -> Response:
    """Every registered model, with the GPU classes that may run it."""
    specs = get_services().registry.specs.values()
    return jsonify({"apps": [spec.info().model_dump(mode="json") for spec in specs]})
