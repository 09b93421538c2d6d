"""``POST /getImageToImage``: admit a job, then answer at once or when it is done."""

from __future__ import annotations

from flask import Blueprint, Response, request
from pydantic import ValidationError

from api.auth import current_owner, require_key
from api.envelopes import job_response
from api.errors import invalid_request
from api.jobs import submit
from api.services import get_services
from shared.models import ImageToImageRequest

bp = Blueprint("images", __name__)
bp.before_request(require_key)


@bp.post("/getImageToImage")
def get_image_to_image() -> Response:
    """Queue an image-to-image job; with ``celery: false`` wait for it, up to a limit."""
    try:
        body = ImageToImageRequest.model_validate_json(request.get_data() or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc) from None
    services = get_services()
    record = submit(services, body, current_owner())
    if not body.celery:
        record = services.jobs.wait(record.task_id, services.settings.sync_wait_s)
    return job_response(services, record)
