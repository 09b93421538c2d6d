"""Turning job records into responses, with image URLs signed at read time."""

from __future__ import annotations

from flask import Response, url_for

from api.errors import json_response
from api.services import Services
from shared.models import Envelope, JobRecord, JobState


def envelope_for(services: Services, record: JobRecord) -> Envelope:
    """A job's envelope: signed URLs once done, queue position and ETA while it waits."""
    position = eta = None
    if record.state is JobState.QUEUED:
        stale_after_s = services.settings.worker_stale_after_s
        position, mean, workers = services.jobs.queue_snapshot(record, stale_after_s)
        if position is None:  # a worker took it since the record was read
            record = services.jobs.get(record.task_id)
        elif mean is not None:
            eta = round(mean * position / max(1, workers), 2)
    urls = None
    if record.output is not None:
        sign = services.storage.presign
        urls = ([sign(k) for k in record.image_keys], [sign(k) for k in record.preview_keys])
    return Envelope.for_job(record, urls, queue_position=position, eta_seconds=eta)


def job_response(
    services: Services, record: JobRecord, warnings: list[str] | None = None
) -> Response:
    """The envelope of a job, always 200, as Qolaba's server answers (clients check for
    200); a job still pending also carries a ``Location`` to poll."""
    envelope = envelope_for(services, record)
    envelope.warnings = warnings
    if record.status.is_terminal:
        return json_response(envelope, 200)
    location = url_for("tasks.get_task", task_id=record.task_id)
    return json_response(envelope, 200, {"Location": location})
