"""``/openapi.json`` and ``/docs``: an OpenAPI 3.1 document built from the pydantic models,
and Swagger UI served from the ``swagger_ui_bundle`` package's files (no CDN).

Bodies and responses are never written by hand here: every schema under
``components/schemas`` comes from ``models_json_schema``; this module only says which
model each route takes and answers with.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import swagger_ui_bundle  # type: ignore[import-untyped]
from flask import Blueprint, Response, jsonify, render_template, send_from_directory
from pydantic import BaseModel, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.exceptions import NotFound

from api.playground import browser_page
from api.tasks import MAX_WAIT_S, GetImageQuery, ListQuery, StatusQuery, TaskQuery
from shared.models import AppsEnvelope, Envelope, ImageToImageRequest

bp = Blueprint("openapi", __name__, template_folder="templates")

REF = "#/components/schemas/{model}"
SWAGGER_UI_DIR = Path(swagger_ui_bundle.swagger_ui_path)
# What templates/docs.html loads, and nothing else: the package's own index.html is a
# second Swagger UI, with a box that loads any spec URL into this origin, and its
# oauth2-redirect.html answers OAuth callbacks Easel never makes.
DOCS_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})
Schema = dict[str, Any]


class TaskList(BaseModel):
    """One page of ``GET /tasks``: pass ``next_cursor`` back as ``cursor`` for the next."""

    tasks: list[Envelope]
    next_cursor: float | None = None


class Health(BaseModel):
    """The answer of ``GET /health``."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """The answer of ``GET /ready``: Redis and S3 answer; live workers per GPU class."""

    status: Literal["ready"]
    redis: Literal["ok"]
    s3: Literal["ok"]
    workers: dict[str, int] = Field(description="live workers on each GPU class's queue")


MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (ImageToImageRequest, "validation"),
    (TaskQuery, "validation"),
    (GetImageQuery, "validation"),
    (StatusQuery, "validation"),
    (ListQuery, "validation"),
    (Envelope, "serialization"),
    (AppsEnvelope, "serialization"),
    (TaskList, "serialization"),
    (Health, "serialization"),
    (Readiness, "serialization"),
]

# Reusable error answers: every one is the JSON envelope with status FAILED.
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "A field broke a rule; `error_data.errors` names each field and rule."),
    401: ("Unauthorized", "Missing or unknown API key."),
    404: ("NotFound", "Unknown task, someone else's task, unknown `app_id`, or no such file."),
    405: ("MethodNotAllowed", "The path exists but not with this method; `Allow` lists them."),
    409: ("Conflict", "The `Idempotency-Key` was used with a different body."),
    413: ("PayloadTooLarge", "The body is larger than `EASEL_MAX_BODY_BYTES`."),
    414: ("URITooLong", "The request line is longer than the server reads (4094 bytes)."),
    429: (
        "TooManyRequests",
        "A per-key limit: the rate, jobs in flight, concurrent waits (`max_waits`) or bytes "
        "of inline images (`max_input_bytes`); retry after `Retry-After` seconds.",
    ),
    431: ("HeaderFieldsTooLarge", "A header is longer than the server reads (8190 bytes)."),
    500: ("InternalError", "A bug; the answer never carries a traceback."),
    503: (
        "Unavailable",
        "Redis or S3 unreachable, no live worker serves the GPU class, or the server is "
        "reading its limit of large bodies (then with `Retry-After`).",
    ),
}
RETRY_AFTER: Schema = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    }
}
HEADERS: dict[int, Schema] = {
    405: {"Allow": {"description": "The methods the path takes.", "schema": {"type": "string"}}},
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}
IDEMPOTENCY_KEY: Schema = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a submit safe to retry: the same key and body within "
        "`EASEL_IDEMPOTENCY_TTL_S` return the first task; another body gets 409."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
}
SERVER = (414, 431, 500)  # what any request may get, from gunicorn or a bug
KEYED = (401, 405, 429, 503, *SERVER)  # what any keyed route may answer
PUBLIC: list[dict[str, list[str]]] = []  # ``security`` of a route that needs no key


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3.1 document of this API."""
    return jsonify(document())


@bp.get("/docs")
def docs() -> Response:
    """Swagger UI over ``/openapi.json``, from local files only."""
    return browser_page(render_template("docs.html"))


@bp.get("/docs/assets/<path:filename>")
def docs_asset(filename: str) -> Response:
    """One of the Swagger UI files that ``/docs`` loads; any other is a 404."""
    if filename not in DOCS_ASSETS:
        raise NotFound(f"no such file: {filename}")
    return send_from_directory(SWAGGER_UI_DIR, filename)


def api_version() -> str:
    """The installed package's version."""
    try:
        return version("easel")
    except PackageNotFoundError:
        return "0.0.0"


@cache
def document() -> Schema:
    """The whole OpenAPI 3.1 document (built once per process)."""
    refs, top = models_json_schema(MODELS, ref_template=REF)
    schemas: Schema = dict(top.get("$defs", {}))
    ref = {model: refs[(model, mode)]["$ref"] for model, mode in MODELS}
    schemas["ImageToImageForm"] = multipart_variant(schemas["ImageToImageRequest"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Easel",
            "version": api_version(),
            "summary": "Self-hostable image-to-image generation, in the shape of Qolaba's API.",
            "description": (
                "Every answer about a job, and every error, is the `Envelope`; a job's answer "
                "is 200 whatever its status, as Qolaba's server answers. Send "
                "`Authorization: Bearer <key>` (or `X-API-Key: <key>`) to every keyed route. "
                "A wrong method on a known path answers 405; an unknown path answers 404; "
                "both as the envelope. Unknown body fields are a 400 unless the server runs "
                "with `EASEL_UNKNOWN_FIELDS=ignore`, which drops them and lists them in the "
                "answer's `warnings`."
            ),
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "tags": [
            {"name": "generation", "description": "Submit image-to-image jobs."},
            {"name": "tasks", "description": "Status, long-poll, cancel and listing."},
            {"name": "service", "description": "Models, probes and this documentation."},
        ],
        "paths": paths(ref),
        "components": {
            "schemas": schemas,
            "responses": error_responses(ref[Envelope]),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The API key (`easel keys create`).",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "The same key, as Qolaba's newer platform sends it.",
                },
            },
        },
    }


def multipart_variant(request_schema: Schema) -> Schema:
    """The request as ``multipart/form-data``: the same fields, ``image`` as a file part."""
    form = copy.deepcopy(request_schema)
    form["title"] = "ImageToImageForm"
    form["description"] = (
        "The body of `POST /getImageToImage` as form fields; the image may be a file part "
        "(named `image` or `file_url`). Booleans may be `true`/`false`, `True`/`False` or "
        "`1`/`0`; other non-text fields are read as JSON scalars (`4`, `0.5`)."
    )
    for name in ("image", "file_url"):
        form["properties"][name] = {
            "type": "string",
            "format": "binary",
            "contentMediaType": "application/octet-stream",
            "description": "The image file (a text field with a URL or data URI works too).",
        }
    form["required"] = [name for name in form.get("required", []) if name != "image"]
    return form


def error_responses(envelope: str) -> Schema:
    """``components/responses``: one entry per error status, each the envelope."""
    responses: Schema = {}
    for status, (name, description) in ERRORS.items():
        response: Schema = {"description": description, **json_body(envelope)}
        if status in HEADERS:
            response["headers"] = HEADERS[status]
        responses[name] = response
    return responses


def json_body(ref: str) -> Schema:
    """A response's ``content`` of one JSON model."""
    return {"content": {"application/json": {"schema": {"$ref": ref}}}}


def errors(*statuses: int) -> Schema:
    """References to the shared error responses."""
    return {str(s): {"$ref": f"#/components/responses/{ERRORS[s][0]}"} for s in sorted(statuses)}


def query_parameters(model: type[BaseModel]) -> list[Schema]:
    """A query model's fields as OpenAPI parameters (a query string cannot say null)."""
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    parameters = []
    for name, field in schema["properties"].items():
        options = [s for s in field.pop("anyOf", []) if s != {"type": "null"}]
        if field.get("default", "") is None:
            del field["default"]
        if len(options) == 1:
            field.update(options[0])
        elif options:
            field["anyOf"] = options
        parameters.append(
            {"name": name, "in": "query", "required": name in required, "schema": field}
        )
    return parameters


TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "The `task_id` of the envelope that accepted the job.",
    "schema": {"type": "string", "minLength": 1},
}
FILENAME = {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}


def paths(ref: dict[type[BaseModel], str]) -> Schema:
    """Every route of the API."""
    envelope = ref[Envelope]
    job = {"description": "The job's envelope.", **json_body(envelope)}
    job = {
        "description": "The job's envelope; while it is PENDING, `Location` says where to poll.",
        "headers": {
            "Location": {"description": "Where to poll the job.", "schema": {"type": "string"}}
        },
        **json_body(envelope),
    }
    return {
        "/getImageToImage": {"post": submit_operation(ref, job, "getImageToImage")},
        "/getImagetoImage": {"post": submit_operation(ref, job, "getImagetoImage")},
        "/tasks/{task_id}": {
            "get": {
                "tags": ["tasks"],
                "summary": "A task's envelope",
                "description": (
                    f"`?wait=S` (0 to {MAX_WAIT_S:g}) holds the answer until the job ends or "
                    "S seconds pass. A PENDING answer carries `Location`."
                ),
                "operationId": "getTask",
                "parameters": [TASK_ID, *query_parameters(StatusQuery)],
                "responses": {"200": job, **errors(400, 404, *KEYED)},
            }
        },
        "/getImage": {
            "post": {
                "tags": ["tasks"],
                "summary": "A task's envelope (as Qolaba's docs spell the call)",
                "operationId": "getImage",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": ref[GetImageQuery]}}},
                },
                "responses": {"200": job, **errors(400, 404, 413, *KEYED)},
            }
        },
        "/tasks/{task_id}/cancel": {
            "post": {
                "tags": ["tasks"],
                "summary": "Cancel a task",
                "description": "A queued job never runs; a running one stops at its next step; "
                "a finished one answers its final state.",
                "operationId": "cancelTask",
                "parameters": [TASK_ID],
                "responses": {"200": job, **errors(404, *KEYED)},
            }
        },
        "/tasks": {
            "post": {
                "tags": ["tasks"],
                "summary": "A task's envelope (Qolaba's form)",
                "operationId": "postTask",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": ref[TaskQuery]}}},
                },
                "responses": {"200": job, **errors(400, 404, 413, *KEYED)},
            },
            "get": {
                "tags": ["tasks"],
                "summary": "The caller's tasks, newest first",
                "operationId": "listTasks",
                "parameters": query_parameters(ListQuery),
                "responses": {
                    "200": {"description": "One page of tasks.", **json_body(ref[TaskList])},
                    **errors(400, *KEYED),
                },
            },
        },
        **service_paths(ref),
    }


def submit_operation(ref: dict[type[BaseModel], str], job: Schema, operation_id: str) -> Schema:
    """``POST /getImageToImage`` (or Qolaba's docs' spelling), as JSON or as a form."""
    return {
        "tags": ["generation"],
        "summary": "Submit an image-to-image job",
        "description": (
            "`celery: true` answers 200 PENDING at once, with `Location`; `celery: false` "
            "waits for the result up to `EASEL_SYNC_WAIT_S`, then answers 200 PENDING. "
            "`/getImagetoImage` is the same call, as Qolaba's docs page spells it."
        ),
        "operationId": operation_id,
        "parameters": [IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": ref[ImageToImageRequest]}},
                "multipart/form-data": {"schema": {"$ref": REF.format(model="ImageToImageForm")}},
            },
        },
        "responses": {"200": job, **errors(400, 404, 409, 413, *KEYED)},
    }


def service_paths(ref: dict[type[BaseModel], str]) -> Schema:
    """The routes that need no key: models, probes, documentation and the playground."""

    def public(operation_id: str, summary: str, response: Schema, *statuses: int) -> Schema:
        return {
            "get": {
                "tags": ["service"],
                "summary": summary,
                "operationId": operation_id,
                "security": PUBLIC,
                "responses": {"200": response, **errors(405, *SERVER, *statuses)},
            }
        }

    html = {
        "description": "An HTML page.",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
    file = {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}}
    listing = {"description": "Every registered model.", **json_body(ref[AppsEnvelope])}
    alive = {"description": "The process is alive.", **json_body(ref[Health])}
    ready = {"description": "Redis and S3 answer.", **json_body(ref[Readiness])}
    spec = {
        "description": "This document.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    metrics = {
        "description": "Prometheus metrics of every API process (text exposition format).",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    paths = {
        "/metrics": public("metrics", "Prometheus metrics", metrics),
        "/list_of_Apps": public("listOfApps", "The models this deployment serves", listing),
        "/health": public("health", "Liveness", alive),
        "/ready": public("ready", "Readiness: Redis, S3 and live workers", ready, 503),
        "/openapi.json": public("openapi", "This OpenAPI 3.1 document", spec),
        "/docs": public("docs", "Swagger UI", html),
        "/docs/assets/{filename}": public("docsAsset", "A Swagger UI file", file, 404),
        "/": public("playground", "The playground page", html),
        "/static/{filename}": public("static", "A playground file", file, 404),
    }
    for path in ("/docs/assets/{filename}", "/static/{filename}"):
        paths[path]["get"]["parameters"] = [FILENAME]
    return paths
