"""Errors keep the envelope, say what is wrong, and never leak a traceback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from api import create_app
from easel.stack import free_port
from shared.jobs import JobStore, connect_redis, key
from shared.settings import Settings
from tests.api.conftest import UNSERVED_QUEUES
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


def test_unexpected_error_is_500_without_a_traceback_and_with_an_error_id_in_the_logs(
    app: Flask,
    client: FlaskClient,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(*_: object) -> None:
        raise RuntimeError("secret internals /srv/easel/config.py line 12")

    monkeypatch.setattr(app.extensions["easel"].registry, "check_runnable", explode)
    response = client.post("/getImageToImage", json=BODY, headers=auth)
    assert response.status_code == 500
    error_id = response.json["error_data"]["error_id"]
    assert response.json["error"] == (
        f"internal error; the request was not processed (error id {error_id})"
    )
    assert b"Traceback" not in response.data and b"secret internals" not in response.data
    [logged] = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged.exc_info is not None and "secret internals" in str(logged.exc_info[1])


def test_health_answers_without_dependencies(unreachable_redis_app: Flask) -> None:
    response = unreachable_redis_app.test_client().get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_a_failed_publish_is_503_and_an_unremovable_record_is_left_to_the_reaper(
    stack_env: dict[str, str], auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings_from(stack_env, queues=UNSERVED_QUEUES, require_live_worker="false"))
    services = app.extensions["easel"]
    client = app.test_client()
    body = {**BODY, "celery": True, "inference_type": "a10g"}
    started = time.time()
    accepted = client.post("/getImageToImage", json=body, headers=auth)
    assert accepted.status_code == 200
    assert accepted.json["task_id"] not in services.jobs.unpublished("apitest.a10g", time.time())

    def broker_down(*args: object, **kwargs: object) -> None:
        raise OperationalError("connection refused")

    def redis_down(record: object) -> None:
        raise RedisError("connection refused")

    monkeypatch.setattr(services.celery, "send_task", broker_down)
    monkeypatch.setattr(services.jobs, "discard", redis_down)
    refused = client.post("/getImageToImage", json=body, headers=auth)
    assert refused.status_code == 503
    assert refused.json["error"] == "the job queue is unreachable; the job was not accepted"
    # The record could not be taken back, so it waits in the index the reaper sweeps
    # (tests/worker/test_reaper.py), instead of sitting PENDING for the job TTL.
    left = [
        task_id
        for task_id, score in services.jobs.redis.zrange(
            key("unpublished", "apitest.a10g"), 0, -1, withscores=True
        )
        if score >= started
    ]
    assert len(left) == 1
    assert services.jobs.get(left[0].decode()).state.value == "queued"


@pytest.fixture
def hanging_redis() -> Iterator[str]:
    """A server that accepts connections and never answers: Redis stopped mid-flight."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for sock in [*held, listener]:
        sock.close()


def test_a_redis_that_hangs_is_503_within_2_s(
    stack_env: dict[str, str], auth: dict[str, str], hanging_redis: str
) -> None:
    """The issue's bound, with the default EASEL_REDIS_TIMEOUT_S."""
    env = {k: v for k, v in stack_env.items() if k != "EASEL_REDIS_TIMEOUT_S"}
    client = create_app(settings_from(env, redis_url=hanging_redis)).test_client()
    assert client.get("/health").status_code == 200  # first-request setup, outside the clock
    for method, path, body in (
        ("POST", "/getImageToImage", BODY),
        ("GET", "/tasks/abc", None),
        ("GET", "/ready", None),
    ):
        started = time.monotonic()
        response = client.open(path, method=method, json=body, headers=auth)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, (path, response.json)
        assert elapsed < 2.0, f"{method} {path}: 503 after {elapsed:.2f} s"
