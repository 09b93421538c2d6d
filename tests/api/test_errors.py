"""Errors keep the envelope, say what is wrong, and never leak a traceback."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from easel.stack import free_port
from shared.jobs import JobStore, connect_redis
from shared.settings import Settings
from tests.conftest import data_uri, job_record, png_bytes, settings_from

BODY = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64))}


def test_unknown_route_is_404_in_the_envelope(client: FlaskClient) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json["status"] == "FAILED" and response.json["error"]


def test_wrong_method_is_405_with_allow(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.get("/getImageToImage", headers=auth)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.json["error"]


def test_post_tasks_without_task_id_is_400(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.post("/tasks", json={}, headers=auth)
    assert response.status_code == 400
    assert response.json["error"] == "task_id: Field required"


def test_someone_elses_task_is_404_not_403(
    client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    store = JobStore(connect_redis(settings), settings.job_ttl_s)
    record = job_record("other-owners-task", owner="someone-else")
    store.create(record)
    for response in (
        client.get("/tasks/other-owners-task", headers=auth),
        client.post("/tasks", json={"task_id": "other-owners-task"}, headers=auth),
    ):
        assert response.status_code == 404
        assert response.json["error"] == "task_id: no task 'other-owners-task'"


@pytest.fixture
def unreachable_redis_app(stack_env: dict[str, str]) -> Flask:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    return create_app(settings_from(stack_env, redis_url=dead, redis_timeout_s="0.5"))


def test_redis_unreachable_is_503_not_a_hang(
    unreachable_redis_app: Flask, auth: dict[str, str]
) -> None:
    client = unreachable_redis_app.test_client()
    for response in (
        client.post("/getImageToImage", json=BODY, headers=auth),
        client.get("/tasks/abc", headers=auth),
        client.get("/ready"),
    ):
        assert response.status_code == 503
        assert response.json["error"] == "Redis is unreachable; try again shortly"


def test_unexpected_error_is_500_without_a_traceback(
    app: Flask, client: FlaskClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: object) -> None:
        raise RuntimeError("secret internals /srv/easel/config.py line 12")

    monkeypatch.setattr(app.extensions["easel"].registry, "check_runnable", explode)
    response = client.post("/getImageToImage", json=BODY, headers=auth)
    assert response.status_code == 500
    assert response.json["error"] == "internal error; the request was not processed"
    assert b"Traceback" not in response.data and b"secret internals" not in response.data


def test_health_answers_without_dependencies(unreachable_redis_app: Flask) -> None:
    response = unreachable_redis_app.test_client().get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}
