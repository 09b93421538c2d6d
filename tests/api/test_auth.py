"""Bearer keys: a request without a valid one is 401 and touches nothing."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.conftest import API_KEY

HEADERS = [
    {},
    {"Authorization": API_KEY},
    {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": f"Bearer {API_KEY}x"},
]


@pytest.mark.parametrize("headers", HEADERS)
def test_missing_or_bad_key_is_401(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.post("/getImageToImage", json={"app_id": "tiny-sd"}, headers=headers)
    assert response.status_code == 401
    assert response.json["error"].startswith("Authorization: ")
    assert set(response.json) >= {"task_id", "status", "input", "output", "error", "error_data"}


@pytest.mark.parametrize("path", ["/tasks/abc"])
def test_task_routes_need_a_key(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.post("/tasks", json={"task_id": "abc"}).status_code == 401


def test_key_check_runs_before_validation(client: FlaskClient) -> None:
    response = client.post("/getImageToImage", data=b"{not json")
    assert response.status_code == 401
