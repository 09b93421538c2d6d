"""Log lines are one JSON object each, stamped with the task id of the job they concern; in
text, a record's own text is one line whatever it holds; no URL comes from httpx."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.logs import configure_logging, route_to_root, task_context
from shared.queues import webhook_reprs
from shared.settings import Settings

Lines = Callable[[], list[str]]


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[str]]]:
    """What the root handler writes, line by line; logging is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield lambda: capsys.readouterr().err.splitlines()
    root.handlers[:] = handlers
    root.setLevel(level)


def parsed(lines: Lines) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines()]


def test_a_line_inside_task_context_is_one_json_object_with_the_task_id(lines: Lines) -> None:
    configure_logging(Settings(log_json=True), "worker")
    with task_context("task-123"):
        logging.getLogger("worker.runner").info("step %d", 3, extra={"app_id": "tiny-sd"})
    (line,) = parsed(lines)
    assert list(line)[:6] == ["time", "level", "logger", "message", "service", "task_id"]
    assert line["task_id"] == "task-123"
    assert line["message"] == "step 3"
    assert (line["level"], line["logger"], line["service"]) == ("INFO", "worker.runner", "worker")
    assert line["app_id"] == "tiny-sd"


def test_outside_a_task_the_task_id_is_null_and_contexts_nest(lines: Lines) -> None:
    configure_logging(Settings(log_json=True), "api")
    log = logging.getLogger("api.test")
    log.info("before")
    with task_context("outer"):
        with task_context("inner"):
            log.info("inner")
        log.info("outer")
    log.info("after")
    assert [r["task_id"] for r in parsed(lines)] == [None, "inner", "outer", None]


def test_a_traceback_stays_inside_its_one_json_line(lines: Lines) -> None:
    configure_logging(Settings(log_json=True), "worker")
    with task_context("t"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("worker.runner").exception("job failed")
    (line,) = parsed(lines)
    assert "RuntimeError: boom" in line["exc_info"]
    assert line["task_id"] == "t"


def test_celery_lines_outside_the_task_body_take_the_id_from_their_format_arguments(
    lines: Lines,
) -> None:
    configure_logging(Settings(log_json=True), "worker")
    received = "Task %(name)s[%(id)s] received"
    context = {"name": "g", "id": "abc", "args": "['abc', {'prompt': 'secret'}]", "kwargs": "{}"}
    logging.getLogger("celery.worker.strategy").info(received, context, extra={"data": context})
    (line,) = parsed(lines)
    assert line["task_id"] == "abc"
    assert line["message"] == "Task g[abc] received"
    assert line["data"] == {"name": "g", "id": "abc"}  # a task's arguments stay out of logs


def test_a_logger_with_handlers_of_its_own_is_routed_through_the_json_handler(
    lines: Lines,
) -> None:
    configure_logging(Settings(log_json=True), "api")
    own = logging.getLogger("gunicorn.error.test")
    own.propagate = False
    own.addHandler(logging.StreamHandler())
    route_to_root(own)
    own.warning("worker booted")
    assert parsed(lines)[0]["message"] == "worker booted"


def test_configuring_twice_keeps_one_handler_and_log_json_off_is_plain_text(
    lines: Lines,
) -> None:
    configure_logging(Settings(log_json=True), "api")
    configure_logging(Settings(log_json=False), "api", logging.WARNING)
    with task_context("plain-id"):
        logging.getLogger("api.test").info("dropped: below the level")
        logging.getLogger("api.test").warning("kept")
    (line,) = lines()
    assert line.endswith("WARNING api.test [plain-id] kept")


def test_httpx_and_httpcore_log_only_warnings(lines: Lines) -> None:
    """They log every request's URL at INFO: presigned signatures, webhook tokens."""
    configure_logging(Settings(log_json=True), "worker")
    for name in ("httpx", "httpcore.connection"):
        logging.getLogger(name).info("HTTP Request: GET https://s3/x?X-Amz-Signature=abc")
    logging.getLogger("httpx").warning("kept")
    assert [line["message"] for line in parsed(lines)] == ["kept"]


FORGED = "2026-01-01 00:00:00,000 INFO api.access [None] GET /admin 200"


def test_a_newline_in_a_request_path_cannot_forge_a_text_line(lines: Lines) -> None:
    configure_logging(Settings(log_json=False), "api")
    path = f"/tasks/x\r\n{FORGED}\x1b[2K\x7f\u2028\x85\t"
    logging.getLogger("api.access").info("%s %s %s", "GET", path, 404)
    (line,) = lines()
    assert line.endswith(
        f"INFO api.access [None] GET /tasks/x\\r\\n{FORGED}\\x1b[2K\\x7f\\u2028\\x85\\t 404"
    )


def test_a_text_traceback_is_indented_so_its_message_cannot_forge_a_line(lines: Lines) -> None:
    configure_logging(Settings(log_json=False), "worker")
    try:
        raise ValueError(f"bad\n{FORGED}\x1b]0;title\x07")
    except ValueError:
        logging.getLogger("worker.runner").exception("job failed\nnot a new line")
    first, *traceback = lines()
    assert first.endswith("ERROR worker.runner [None] job failed\\nnot a new line")
    assert traceback[0] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in traceback), traceback
    assert traceback[-2:] == ["  ValueError: bad", f"  {FORGED}\\x1b]0;title\\x07"]


def test_json_lines_hold_control_characters_escaped(lines: Lines) -> None:
    configure_logging(Settings(log_json=True), "api")
    logging.getLogger("api.access").info("GET %s 404", f"/x\n{FORGED}")
    (line,) = parsed(lines)
    assert line["message"] == f"GET /x\n{FORGED} 404"


def test_celery_shows_a_webhook_delivery_without_its_url_or_payload() -> None:
    shown = webhook_reprs("msg_t1_completed", "completed")
    assert shown == {
        "argsrepr": "(<url>, 'msg_t1_completed', <payload>, 'completed')",
        "kwargsrepr": "{}",
    }
