"""The API's log context and access log: one line per request, with its task id.

gunicorn's own access log is off (``easel api`` passes no ``--access-logfile``); the line
written here replaces it, formatted like every other line (JSON by default,
shared/logs.py), and carries the task id of requests about one task: the ``<task_id>``
of ``/tasks/<task_id>`` routes, or the id a submit just made (``bind_task_id``).

The line names the path, never the query string or the body (where image URLs and prompts
travel); a path is the client's to choose, so the text format escapes its control
characters (shared/logs.py) and JSON escapes them anyway.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from api.auth import client_address
from shared.logs import TASK_ID, bind_task_id

log = logging.getLogger("api.access")


def _bind_request() -> None:
    g.easel_log_started = time.perf_counter()
    task_id = (request.view_args or {}).get("task_id")
    g.easel_task_token = bind_task_id(task_id if isinstance(task_id, str) else None)


def _log_request(response: Response) -> Response:
    started = g.get("easel_log_started", time.perf_counter())
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "endpoint": request.url_rule.rule if request.url_rule is not None else None,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "remote_addr": request.remote_addr,
            "client_addr": client_address(),  # behind the proxy: what the proxy saw
        },
    )
    return response


def _unbind_request(_: BaseException | None) -> None:
    # Workers reuse threads and greenlets: a task id left set would leak into the next request.
    token = g.pop("easel_task_token", None)
    if token is not None:
        TASK_ID.reset(token)


def init_app(app: Flask) -> None:
    """Bind each request's task id for logging, and write its access line."""
    app.before_request(_bind_request)
    app.after_request(_log_request)
    app.teardown_request(_unbind_request)
