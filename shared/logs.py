"""Logging for every Easel process: one JSON object per line, each carrying the task id.

``configure_logging`` puts one handler on the root logger. With ``EASEL_LOG_JSON`` on (the
default) each line is a JSON object::

    {"time": "2025-01-01T12:00:00.123456+00:00", "level": "INFO", "logger": "api.access",
     "message": "POST /getImageToImage 202", "service": "api",
     "task_id": "8a0c...", "method": "POST", "status": 202, "duration_ms": 12.5}

``time``, ``level``, ``logger``, ``message``, ``service`` and ``task_id`` are always there
(``task_id`` is null outside a job); anything passed as ``extra=`` is added. Off, lines are
plain text with the task id in brackets. The task id comes from a context variable:
``task_context(task_id)`` sets it around a job in a worker, and the API sets it for each
request about one task, so ``grep <task_id>`` follows a job from the API to its worker.

What stays out of the logs: prompts, image URLs, webhook URLs and presigned URLs. Celery's
task arguments are dropped from its lines (and publishers give every task an ``argsrepr``),
and httpx and httpcore, which log every request's URL at INFO, log only warnings. In text
lines, control characters are escaped (``\\n``, ``\\x1b``), so a newline in a request path
cannot start a forged line: a line that begins in the first column begins a record, and a
traceback follows on lines indented by two spaces.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from shared.settings import Settings

TASK_ID: ContextVar[str | None] = ContextVar("easel_task_id", default=None)
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(task_id)s] %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(message)s %(service)s %(task_id)s"
JSON_NAMES = {"levelname": "level", "name": "logger"}
# Libraries that log a URL (with its query: a presigned signature, a webhook's token) on
# every request at INFO; their warnings still show.
QUIET_LOGGERS = ("httpx", "httpcore")
# What str.splitlines() breaks a line at, and the rest of C0 and C1 (a terminal escape can
# hide or rewrite what a reader sees): every one is written as an escape in text lines.
CONTROLS = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
ESCAPES = {c: repr(chr(c))[1:-1] for c in CONTROLS}
TRACEBACK_INDENT = "  "


@contextmanager
def task_context(task_id: str) -> Iterator[None]:
    """Stamp ``task_id`` on every log line written inside this block."""
    token = TASK_ID.set(task_id)
    try:
        yield
    finally:
        TASK_ID.reset(token)


def bind_task_id(task_id: str | None) -> Token[str | None]:
    """Set the task id until ``TASK_ID.reset`` with the returned token (for request hooks)."""
    return TASK_ID.set(task_id)


class TaskIdFilter(logging.Filter):
    """Adds ``task_id`` and ``service`` to each record that passes the handler."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        task_id = TASK_ID.get()
        if record.name.startswith("celery"):
            task_id = task_id or _celery_task_id(record)
            _drop_task_arguments(record)
        record.task_id = task_id
        return True


def _celery_task_id(record: logging.LogRecord) -> str | None:
    """Celery logs "Task x[id] received/succeeded" outside the task body, with the id in
    its format arguments; take it from there."""
    args = record.args
    if isinstance(args, dict):
        found = args.get("id")
        return found if isinstance(found, str) else None
    return None


def _drop_task_arguments(record: logging.LogRecord) -> None:
    """Celery passes a task's arguments as ``extra={"data": ...}``, which a JSON line would
    print in full: prompts, image URLs. Its text lines never showed them; neither do ours."""
    data = getattr(record, "data", None)
    if isinstance(data, dict) and ("args" in data or "kwargs" in data):
        record.data = {k: v for k, v in data.items() if k not in ("args", "kwargs")}


class _TimeFirst(JsonFormatter):
    """python-json-logger adds the timestamp last; a reader's eye looks for it first."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {"time": log_data.pop("time", None), **log_data}


class _OneLineText(logging.Formatter):
    """Plain text where one record's own text is one line, whatever its arguments hold."""

    def format(self, record: logging.LogRecord) -> str:
        cached = record.exc_text
        if record.exc_info:
            record.exc_text = None  # another handler's text would skip formatException
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\x1b``), but ``keep``."""
    if keep:
        return text.translate({c: e for c, e in ESCAPES.items() if chr(c) not in keep})
    return text.translate(ESCAPES)


def _indented(block: str) -> str:
    """A traceback under its record: escaped but for its newlines, and every line indented,
    so an exception message cannot write a line that looks like a record of its own."""
    return "\n".join(TRACEBACK_INDENT + line for line in escape_controls(block, "\n").split("\n"))


class _EaselHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs, told apart so a second call replaces it."""


def configure_logging(settings: Settings, service: str, level: int | str | None = None) -> None:
    """Send every log line of this process to stderr, as JSON unless ``log_json`` is off."""
    handler = _EaselHandler(sys.stderr)
    handler.addFilter(TaskIdFilter(service))
    formatter: logging.Formatter
    if settings.log_json:
        formatter = _TimeFirst(JSON_FIELDS, rename_fields=JSON_NAMES, timestamp="time")
    else:
        formatter = _OneLineText(PLAIN_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EaselHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def route_to_root(logger: logging.Logger | None = None, **_: Any) -> None:
    """Make a logger that got handlers of its own (gunicorn's, Celery's task logger) write
    through the root handler instead, so its lines are formatted like every other."""
    if logger is None:
        return
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
