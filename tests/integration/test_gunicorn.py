"""Requests gunicorn refuses before Flask sees them still get the JSON envelope; a weak
secret stops ``easel api`` at start, naming the variable and not the value."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from easel.dev import stop
from easel.stack import free_port
from tests.conftest import spawn

pytestmark = pytest.mark.integration


def assert_envelope(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "FAILED"
    assert words in body["error"]


def test_a_request_line_past_the_limit_is_a_json_414(client: httpx.Client) -> None:
    response = client.get(f"/tasks/{'x' * 5000}")
    assert_envelope(response, 414, "URI Too Long")


def test_a_header_past_the_limit_is_a_json_431(client: httpx.Client) -> None:
    response = client.get("/health", headers={"X-Padding": "x" * 9000})
    assert_envelope(response, 431, "Request Header Fields Too Large")


def test_the_limits_leave_ordinary_long_requests_to_the_app(client: httpx.Client) -> None:
    response = client.get(f"/tasks/{'x' * 3000}")
    assert_envelope(response, 404, "")  # Flask answered: an unknown task, not a refusal


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("EASEL_BOOTSTRAP_API_KEY", "change-me", "EASEL_BOOTSTRAP_API_KEY is a placeholder"),
        ("EASEL_KEY_HASH_SECRET", "too-short-a-secret", "EASEL_KEY_HASH_SECRET must be at least"),
    ],
)
def test_easel_api_refuses_to_start_with_a_weak_secret_and_names_it(
    stack_env: dict[str, str], logs_dir: Path, variable: str, value: str, says: str
) -> None:
    log = logs_dir / f"api-refused-{variable}.log"
    process = spawn(
        ["api", "--bind", f"127.0.0.1:{free_port()}"], {**stack_env, variable: value}, log
    )
    try:
        process.wait(timeout=60)  # gunicorn halts: its workers cannot build the app
    finally:
        stop(process)
    assert process.returncode != 0
    text = log.read_text()
    assert says in text and value not in text  # the log names the variable, not the secret
