"""Turning job records into responses, with image URLs signed at read time."""

from __future__ import annotations

from flask import Response, url_for

from api.errors import json_response
from api.services import Services
from shared.models import Envelope, JobRecord


def job_response(services: Services, record: JobRecord, status: int | None = None) -> Response:
    """The envelope of a job: 200 once terminal, 202 with a Location while pending."""
    urls = [services.storage.presign(key) for key in record.image_keys] if record.output else None
    envelope = Envelope.for_job(record, urls)
    if record.status.is_terminal:
        return json_response(envelope, status or 200)
    location = url_for("tasks.get_task", task_id=record.task_id)
    return json_response(envelope, status or 202, {"Location": location})
