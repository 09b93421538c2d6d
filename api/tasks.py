"""The task resource: status (with long-poll), Qolaba's ``POST /tasks``, cancel, listing."""

from __future__ import annotations

from typing import TypeVar

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import current_owner, require_key
from api.envelopes import envelope_for, job_response
from api.errors import invalid_request
from api.metrics import count_job
from api.services import get_services
from shared.errors import UnknownTask
from shared.models import JobRecord, JobState, JobStatus, WebhookEvent
from shared.storage import Storage

bp = Blueprint("tasks", __name__)
bp.before_request(require_key)

MAX_WAIT_S = 60.0
M = TypeVar("M", bound=BaseModel)


class TaskQuery(BaseModel):
    """Qolaba's ``TaskStatus`` body: ``ref_id`` is accepted, may be empty, and is not used
    (the task id alone names the task)."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(min_length=1, max_length=64, strict=True)
    ref_id: str | None = Field(default=None, max_length=256, strict=True)


class GetImageQuery(BaseModel):
    """The status call as Qolaba's docs spell it: ``{"id": ..., "refID": ""}``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, strict=True)
    refID: str | None = Field(default=None, max_length=256, strict=True)


class StatusQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    wait: float = Field(default=0, ge=0, le=MAX_WAIT_S)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    status: JobStatus | None = None
    limit: int = Field(default=20, ge=1, le=100)
    cursor: float | None = None


def parse_args(model: type[M]) -> M:
    """Validate the query string; a 400 names the parameter."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise invalid_request(exc) from None


def owned_task(task_id: str) -> JobRecord:
    """The caller's task; someone else's is as unknown as a missing one."""
    owner = current_owner()
    record = get_services().jobs.get(task_id, owner)
    if record.owner != owner:
        raise UnknownTask(f"task_id: no task {task_id!r}")
    return record


@bp.get("/tasks/<task_id>")
def get_task(task_id: str) -> Response:
    """The envelope of one task; ``?wait=S`` holds the answer until it ends, up to S seconds."""
    query = parse_args(StatusQuery)
    record = owned_task(task_id)
    services = get_services()
    if query.wait and not record.status.is_terminal:
        with services.wait_cap.slot(record.owner, query.wait):
            record = services.completions.wait(task_id, query.wait)
    return job_response(services, record)


@bp.post("/tasks")
def post_task() -> Response:
    """Qolaba's form of the status call: ``{"task_id": ..., "ref_id": ""}`` in the body."""
    query = parse_body(TaskQuery)
    return job_response(get_services(), owned_task(query.task_id))


@bp.post("/getImage")
def get_image() -> Response:
    """The status call as Qolaba's docs spell it: ``{"id": ..., "refID": ""}``."""
    query = parse_body(GetImageQuery)
    return job_response(get_services(), owned_task(query.id))


def parse_body(model: type[M]) -> M:
    """Validate a JSON body; a 400 names the field."""
    try:
        return model.model_validate_json(request.get_data() or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc) from None


@bp.post("/tasks/<task_id>/cancel")
def cancel_task(task_id: str) -> Response:
    """Cancel a job: queued ones never run, running ones stop at their next step."""
    services = get_services()
    before = owned_task(task_id)
    record = services.jobs.cancel(task_id)
    if before.state is JobState.QUEUED and record.state is JobState.CANCELED:
        # It never reaches a worker, so its completed webhook and cleanup start here.
        services.webhooks.publish(record, WebhookEvent.COMPLETED, envelope_for(services, record))
        if record.params.image_url is None:
            services.storage.delete(Storage.input_key(task_id))
        count_job(record)
    return job_response(services, record)


@bp.get("/tasks")
def list_tasks() -> Response:
    """The caller's recent tasks, newest first; pass ``next_cursor`` back as ``cursor``."""
    query = parse_args(ListQuery)
    services = get_services()
    records, cursor = services.jobs.owned(current_owner(), query.status, query.limit, query.cursor)
    tasks = [envelope_for(services, r).model_dump(mode="json") for r in records]
    return jsonify({"tasks": tasks, "next_cursor": cursor})
