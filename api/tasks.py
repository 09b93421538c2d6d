"""The task resource: ``GET /tasks/<id>`` and Qolaba's ``POST /tasks``."""

from __future__ import annotations

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import current_owner, require_key
from api.envelopes import job_response
from api.errors import invalid_request
from api.services import get_services
from shared.errors import UnknownTask
from shared.models import JobRecord

bp = Blueprint("tasks", __name__)
bp.before_request(require_key)


class TaskQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(min_length=1, max_length=64, strict=True)


def owned_task(task_id: str) -> JobRecord:
    """The caller's task; someone else's is as unknown as a missing one."""
    record = get_services().jobs.get(task_id)
    if record.owner != current_owner():
        raise UnknownTask(f"task_id: no task {task_id!r}")
    return record


@bp.get("/tasks/<task_id>")
def get_task(task_id: str) -> Response:
    """The envelope of one task."""
    return job_response(get_services(), owned_task(task_id), status=200)


@bp.post("/tasks")
def post_task() -> Response:
    """Qolaba's form of the status call: ``{"task_id": ...}`` in the body."""
    try:
        query = TaskQuery.model_validate_json(request.get_data() or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc) from None
    return job_response(get_services(), owned_task(query.task_id), status=200)
