"""``POST /getImageToImage``: admit a job, then answer at once or when it is done."""

from __future__ import annotations

import base64
import json
from typing import Any

from flask import Blueprint, Response, request
from pydantic import ValidationError

from api.auth import current_key, require_key
from api.envelopes import job_response
from api.errors import invalid_request
from api.idempotency import submit_once
from api.services import get_services
from shared.models import ImageToImageRequest

bp = Blueprint("images", __name__)
bp.before_request(require_key)

# Form fields that stay text; the others are read as JSON scalars ("4" -> 4, "true" -> True).
TEXT_FIELDS = {"app_id", "image", "prompt", "negative_prompt", "inference_type", "ref_id"}
TEXT_FIELDS |= {"output_format", "webhook"}
# List fields may repeat (-F f=a -F f=b) or hold one JSON list (-F 'f=["a","b"]').
LIST_FIELDS = {"webhook_events_filter"}


@bp.post("/getImageToImage")
def get_image_to_image() -> Response:
    """Queue an image-to-image job; with ``celery: false`` wait for it, up to a limit."""
    try:
        if request.mimetype == "multipart/form-data":
            body = ImageToImageRequest.model_validate(form_fields())
        else:
            body = ImageToImageRequest.model_validate_json(request.get_data() or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc) from None
    services = get_services()
    record = submit_once(services, body, current_key(), request.headers.get("Idempotency-Key"))
    if not body.celery:
        record = services.jobs.wait(record.task_id, services.settings.sync_wait_s)
    return job_response(services, record)


def form_fields() -> dict[str, Any]:
    """A multipart body as request fields; a file part named ``image`` becomes a data URI."""
    fields: dict[str, Any] = {}
    for name, value in request.form.items():
        fields[name] = value if name in TEXT_FIELDS else _scalar(value)
    for name in LIST_FIELDS & set(request.form):
        values = request.form.getlist(name)
        if len(values) > 1 or not values[0].lstrip().startswith("["):
            fields[name] = values
    upload = request.files.get("image")
    if upload is not None:
        mime = upload.mimetype if upload.mimetype.startswith("image/") else "image/png"
        fields["image"] = f"data:{mime};base64,{base64.b64encode(upload.read()).decode()}"
    return fields


def _scalar(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value  # validation then names the field and the type it wanted
