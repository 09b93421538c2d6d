"""Log lines are one JSON object each, stamped with the task id of the job they concern."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.logs import configure_logging, route_to_root, task_context
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
