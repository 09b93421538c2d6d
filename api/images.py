"""``POST /getImageToImage``: admit a job, then answer at once or when it is done."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from flask import Blueprint, Response, request
from pydantic import ValidationError

from api.auth import current_key, require_key
from api.envelopes import job_response
from api.errors import invalid_request
from api.idempotency import submit_once
from api.jobs import take_inline_image
from api.services import Services, get_services
from shared.errors import ServerBusy, field_error
from shared.models import ImageToImageRequest, JobRecord

bp = Blueprint("images", __name__)
bp.before_request(require_key)

# Form fields that stay text; the others are read as JSON scalars ("4" -> 4, "true" -> True).
TEXT_FIELDS = {"app_id", "image", "prompt", "negative_prompt", "inference_type", "ref_id"}
TEXT_FIELDS |= {"output_format", "webhook", "file_url"}
# Form booleans as openapi-python-client and others send them; JSON bodies stay strict.
BOOL_FIELDS = {"celery", "upscale", "check_copyright_content"}
FORM_BOOLEANS = {"true": True, "True": True, "1": True, "false": False, "False": False, "0": False}
# List fields may repeat (-F f=a -F f=b) or hold one JSON list (-F 'f=["a","b"]').
LIST_FIELDS = {"webhook_events_filter"}
LARGE_BODY_RETRY_S = 2.0


@bp.post("/getImageToImage")
@bp.post("/getImagetoImage")  # the spelling on Qolaba's docs page
def get_image_to_image() -> Response:
    """Queue an image-to-image job; with ``celery: false`` wait for it, up to a limit."""
    services = get_services()
    sync_wait_s = services.settings.sync_wait_s
    with ExitStack() as waiting:
        with large_body_turn(services):  # reading and storing it; waiting takes no turn
            body, image, ignored = read_request(services.settings.unknown_fields == "ignore")
            if not body.celery:  # a 429 here leaves no job
                waiting.enter_context(services.wait_cap.slot(current_key().owner, sync_wait_s))
            record = admit(services, body, image)
            del image  # nothing holds the bytes while the request waits
        if not body.celery:
            record = services.completions.wait(record.task_id, sync_wait_s)
    warnings = [f"{name}: unknown field, ignored (EASEL_UNKNOWN_FIELDS=ignore)" for name in ignored]
    return job_response(services, record, warnings=warnings or None)


def admit(services: Services, body: ImageToImageRequest, image: bytes | None) -> JobRecord:
    """Submit the job once per Idempotency-Key."""
    header = request.headers.get("Idempotency-Key")
    return submit_once(services, body, current_key(), header, image)


@contextmanager
def large_body_turn(services: Services) -> Iterator[None]:
    """Read a large body only while fewer than ``max_large_bodies`` are being read here.

    Parsing holds a body a few times over (bytes, then the decoded image), so the number
    read at once, not only the size of each, bounds this process's memory. A body of
    unknown length (chunked) counts as large.
    """
    settings = services.settings
    size = request.content_length
    if size is not None and size < settings.large_body_bytes:
        yield
        return
    if not services.large_bodies.acquire(timeout=settings.large_body_wait_s):
        raise ServerBusy(
            "body: this server is reading its limit of large request bodies; retry shortly, "
            "or send the image by URL",
            retry_after_s=LARGE_BODY_RETRY_S,
        )
    try:
        yield
    finally:
        services.large_bodies.release()


def read_request(
    ignore_unknown: bool = False,
) -> tuple[ImageToImageRequest, bytes | None, list[str]]:
    """The validated request, the bytes of its inline image taken out of it, and the
    unknown fields dropped (only with ``ignore_unknown``; else they are a 400)."""
    ignored: list[str] = []
    try:
        if request.mimetype == "multipart/form-data":
            fields, upload = form_fields()
            if ignore_unknown:
                fields, ignored = drop_unknown(fields)
            body = ImageToImageRequest.model_validate(fields)
        elif ignore_unknown:
            fields, ignored = drop_unknown(_json_object(request.get_data(cache=False)))
            body, upload = ImageToImageRequest.model_validate(fields), None
        else:  # parsed straight from the bytes, which nothing keeps afterwards
            upload = None
            body = ImageToImageRequest.model_validate_json(request.get_data(cache=False) or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc) from None
    return (*take_inline_image(body, upload), ignored)


def drop_unknown(fields: Any) -> tuple[Any, list[str]]:
    """The fields the request model knows, and the names of the others."""
    if not isinstance(fields, dict):
        return fields, []  # validation names what is wrong with it
    known = set(ImageToImageRequest.model_fields)
    ignored = sorted(name for name in fields if name not in known)
    return {k: v for k, v in fields.items() if k in known}, ignored


def _json_object(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        raise field_error("body", "json_invalid", "the body is not valid JSON") from None


def form_fields() -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """A multipart body as request fields, and a file part named ``image`` (or ``file_url``)
    as (mime, bytes).

    The file part stands in the fields as an empty data URI of its type, so validation
    sees an inline image; its bytes are never base64-encoded. Booleans are read as
    generated clients send them (``True``/``False``, ``true``/``false``, ``1``/``0``).
    """
    fields: dict[str, Any] = {}
    for name, value in request.form.items():
        if name in BOOL_FIELDS:
            fields[name] = FORM_BOOLEANS.get(value, value)
        else:
            fields[name] = value if name in TEXT_FIELDS else _scalar(value)
    for name in LIST_FIELDS & set(request.form):
        values = request.form.getlist(name)
        if len(values) > 1 or not values[0].lstrip().startswith("["):
            fields[name] = values
    for part in ("image", "file_url"):
        upload = request.files.get(part)
        if upload is not None:
            mime = upload.mimetype if upload.mimetype.startswith("image/") else "image/png"
            fields[part] = f"data:{mime};base64,"
            return fields, (mime, upload.read())
    return fields, None


def _scalar(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value  # validation then names the field and the type it wanted
