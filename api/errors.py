"""Every error becomes the JSON envelope here, and nowhere else."""

from __future__ import annotations

import logging
import math
import secrets

from flask import Flask, Response
from flask_limiter import RateLimitExceeded
from limits.errors import StorageError
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from api.limits import limiter_error
from shared.errors import EaselError, InvalidRequest, field_errors
from shared.models import Envelope

log = logging.getLogger(__name__)


def json_response(
    envelope: BaseModel, status: int, headers: dict[str, str] | None = None
) -> Response:
    """Serialize an envelope."""
    body = envelope.model_dump_json()
    return Response(body, status=status, mimetype="application/json", headers=headers)


def invalid_request(exc: ValidationError) -> InvalidRequest:
    """Turn pydantic's errors into a 400 that names each field and its rule."""
    errors: list[tuple[str, str, str]] = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in err["loc"]) or "body"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        errors.append((field, err["type"], message))
    summary = "; ".join(f"{field}: {message}" for field, _, message in errors)
    return InvalidRequest(summary, field_errors(errors))


def init_app(app: Flask) -> None:
    """Register the handlers that map errors to responses."""

    @app.errorhandler(EaselError)
    def _easel(exc: EaselError) -> Response:
        headers = {}
        retry_after_s = getattr(exc, "retry_after_s", None)  # TooManyRequests, ServerBusy
        if retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
        return json_response(Envelope.for_error(exc.message, exc.data), exc.status_code, headers)

    @app.errorhandler(RateLimitExceeded)
    @app.errorhandler(StorageError)
    def _limiter(exc: RateLimitExceeded | StorageError) -> Response:
        return _easel(limiter_error(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return json_response(Envelope.for_error(exc.description or exc.name), status, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        error_id = secrets.token_hex(6)  # finds the traceback in the logs; says nothing else
        log.exception("unhandled error (error id %s)", error_id)
        message = f"internal error; the request was not processed (error id {error_id})"
        return json_response(Envelope.for_error(message, {"error_id": error_id}), 500)
