"""Requests gunicorn refuses before Flask sees them still get the JSON envelope."""

from __future__ import annotations

import httpx
import pytest

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
