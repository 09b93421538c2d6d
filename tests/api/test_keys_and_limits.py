"""Keys and tenants through the Flask app: 401s, isolation, rate limits, the in-flight cap,
Idempotency-Key. A make-believe worker beats on this module's own queues, so submits get
past the live-worker check and really queue (on lists nobody reads, deleted afterwards)."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.auth import owner_id
from shared.jobs import WorkerLiveness, connect_redis, key
from shared.keys import KeyStore
from shared.models import InferenceType
from shared.settings import Settings
from tests.conftest import API_KEY, data_uri, png_bytes, settings_from

TOKEN = secrets.token_hex(4)
QUEUES = {gpu.value: f"keytest-{TOKEN}.{gpu.value}" for gpu in InferenceType}
BODY = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True}
ENVELOPE = {"task_id", "status", "input", "output", "error", "error_data"}

Headers = dict[str, str]


@pytest.fixture(scope="module")
def live_settings(stack_env: dict[str, str]) -> Settings:
    return settings_from(stack_env, queues=json.dumps(QUEUES))


@pytest.fixture(scope="module")
def redis_client(live_settings: Settings) -> redis.Redis:
    return connect_redis(live_settings)


@pytest.fixture(scope="module")
def live_app(live_settings: Settings, redis_client: redis.Redis) -> Iterator[Flask]:
    """The app, with a worker that seems live on each of its queues while the module runs."""
    liveness = WorkerLiveness(redis_client, live_settings.worker_stale_after_s)
    done = threading.Event()

    def beat() -> None:
        while True:
            for queue in QUEUES.values():
                liveness.beat(queue, f"keytest-{TOKEN}@nowhere")
            if done.wait(1.0):
                return

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    yield create_app(live_settings)
    done.set()
    beater.join()
    for queue in QUEUES.values():
        liveness.leave(queue, f"keytest-{TOKEN}@nowhere")
    doomed = list(redis_client.scan_iter(match=f"*keytest-{TOKEN}.*"))
    if doomed:
        redis_client.delete(*doomed)  # the Celery lists and bindings of these queues


@pytest.fixture
def http(live_app: Flask) -> FlaskClient:
    return live_app.test_client()


@pytest.fixture
def make_key(redis_client: redis.Redis, live_settings: Settings) -> Callable[..., Headers]:
    """Create a stored key; returns the headers that use it (plus its id as ``X-Key-Id``)."""

    def make(rate: str = "600/minute", max_inflight: int = 64) -> Headers:
        api_key, record = KeyStore(redis_client, live_settings).create(
            f"test-{TOKEN}", rate, max_inflight
        )
        return {"Authorization": f"Bearer {api_key}", "X-Key-Id": record.id}

    return make


def submit(http: FlaskClient, headers: Headers, body: dict[str, Any] | None = None) -> Any:
    return http.post("/getImageToImage", json=body or BODY, headers=headers)


def jobs_of(client: redis.Redis, owner: str) -> int:
    return int(client.zcard(key("owner", owner)))


def test_unknown_key_is_401(http: FlaskClient) -> None:
    response = http.get("/tasks", headers={"Authorization": "Bearer esl_" + "x" * 43})
    assert response.status_code == 401
    assert response.json["error"] == "Authorization: unknown API key"
    assert set(response.json) >= ENVELOPE


def test_revoked_key_is_401_on_its_very_next_request(
    http: FlaskClient, make_key: Callable[..., Headers], live_settings: Settings,
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    headers = make_key()
    assert http.get("/tasks", headers=headers).status_code == 200
    KeyStore(redis_client, live_settings).revoke(headers["X-Key-Id"])
    for response in (http.get("/tasks", headers=headers), submit(http, headers)):
        assert response.status_code == 401
        assert response.json["error"] == "Authorization: this API key was revoked"


def test_bootstrap_key_keeps_working_and_keeps_its_owner_id(
    http: FlaskClient, redis_client: redis.Redis
) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    response = submit(http, auth)
    assert response.status_code == 200
    task_id = response.json["task_id"]
    assert redis_client.zscore(key("owner", owner_id(API_KEY)), task_id) is not None
    assert http.post(f"/tasks/{task_id}/cancel", headers=auth).json["status"] == "CANCELED"


def test_someone_elses_task_is_404_for_read_cancel_and_list(
    http: FlaskClient, make_key: Callable[..., Headers]
) -> None:
    alice, bob = make_key(), make_key()
    task_id = submit(http, alice).json["task_id"]
    unknown = f"task_id: no task {task_id!r}"
    for response in (
        http.get(f"/tasks/{task_id}", headers=bob),
        http.post("/tasks", json={"task_id": task_id}, headers=bob),
        http.post(f"/tasks/{task_id}/cancel", headers=bob),
    ):
        assert response.status_code == 404
        assert response.json["error"] == unknown
    assert http.get("/tasks", headers=bob).json["tasks"] == []
    assert http.get(f"/tasks/{task_id}", headers=alice).json["state"] == "queued"  # not canceled
    listed = http.get("/tasks", headers=alice).json["tasks"]
    assert [t["task_id"] for t in listed] == [task_id]
    assert http.post(f"/tasks/{task_id}/cancel", headers=alice).json["status"] == "CANCELED"


def test_past_its_rate_a_key_gets_429_with_retry_after_and_others_do_not(
    http: FlaskClient, make_key: Callable[..., Headers]
) -> None:
    slow, other = make_key(rate="3/minute"), make_key()
    # Reads and submits draw on one bucket per key.
    assert http.get("/tasks", headers=slow).status_code == 200
    assert http.get("/tasks/nope", headers=slow).status_code == 404
    assert http.post("/tasks", json={"task_id": "nope"}, headers=slow).status_code == 404
    for response in (http.get("/tasks", headers=slow), submit(http, slow)):
        assert response.status_code == 429
        assert response.json["status"] == "FAILED"
        assert response.json["error"].startswith("rate limit: this API key may make 3 per 1 minute")
        assert set(response.json) >= ENVELOPE
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert http.get("/tasks", headers=other).status_code == 200
    assert http.get("/tasks", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_bad_key_is_401_even_past_the_rate(http: FlaskClient) -> None:
    for _ in range(3):
        assert http.get("/tasks", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_past_its_cap_a_key_gets_429_until_a_job_ends(
    http: FlaskClient, make_key: Callable[..., Headers]
) -> None:
    capped, other = make_key(max_inflight=2), make_key(max_inflight=2)
    first, _ = submit(http, capped).json["task_id"], submit(http, capped)
    refused = submit(http, capped)
    assert refused.status_code == 429
    assert refused.json["error"].startswith(
        "max_inflight: this API key already has 2 jobs queued or running, its cap"
    )
    assert refused.json["error_data"] == {"max_inflight": 2}
    assert int(refused.headers["Retry-After"]) >= 1
    assert submit(http, other).status_code == 200  # another key's cap is its own
    http.post(f"/tasks/{first}/cancel", headers=capped)  # ends it: a slot frees
    assert submit(http, capped).status_code == 200


def test_same_idempotency_key_and_body_give_the_same_task_and_one_job(
    http: FlaskClient, make_key: Callable[..., Headers], redis_client: redis.Redis
) -> None:
    headers = {**make_key(), "Idempotency-Key": "order-1"}
    first = submit(http, headers)
    again = submit(http, headers)
    assert first.status_code == again.status_code == 200
    assert again.json["task_id"] == first.json["task_id"]
    assert again.json["input"] == first.json["input"]
    assert jobs_of(redis_client, headers["X-Key-Id"]) == 1


def test_same_idempotency_key_with_another_body_is_409(
    http: FlaskClient, make_key: Callable[..., Headers], redis_client: redis.Redis
) -> None:
    headers = {**make_key(), "Idempotency-Key": "order-2"}
    assert submit(http, headers).status_code == 200
    response = submit(http, headers, {**BODY, "prompt": "something else"})
    assert response.status_code == 409
    assert response.json["error"].startswith("Idempotency-Key: already used with a different body")
    assert set(response.json) >= ENVELOPE
    assert jobs_of(redis_client, headers["X-Key-Id"]) == 1


def test_idempotency_keys_are_scoped_per_api_key(
    http: FlaskClient, make_key: Callable[..., Headers]
) -> None:
    alice = {**make_key(), "Idempotency-Key": "shared-name"}
    bob = {**make_key(), "Idempotency-Key": "shared-name"}
    assert submit(http, alice).json["task_id"] != submit(http, bob).json["task_id"]


def test_a_failed_submit_frees_its_idempotency_key(
    http: FlaskClient, make_key: Callable[..., Headers]
) -> None:
    headers = {**make_key(), "Idempotency-Key": "retry-me"}
    assert submit(http, headers, {**BODY, "app_id": "no-such-model"}).status_code == 404
    assert submit(http, headers).status_code == 200  # not a 409: nothing was admitted


def test_malformed_idempotency_key_is_400(
    http: FlaskClient, make_key: Callable[..., Headers]
) -> None:
    response = submit(http, {**make_key(), "Idempotency-Key": "x" * 256})
    assert response.status_code == 400
    assert response.json["error_data"]["errors"][0]["field"] == "Idempotency-Key"


def test_concurrent_retries_with_one_idempotency_key_make_one_job(
    live_app: Flask, make_key: Callable[..., Headers], redis_client: redis.Redis
) -> None:
    headers = {**make_key(), "Idempotency-Key": "burst"}
    barrier = threading.Barrier(8)
    answers: list[tuple[int, str]] = []

    def retry() -> None:
        barrier.wait()
        response = submit(live_app.test_client(), headers)
        answers.append((response.status_code, response.json["task_id"]))

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 8
    assert {status for status, _ in answers} == {200}
    assert len({task_id for _, task_id in answers}) == 1
    assert jobs_of(redis_client, headers["X-Key-Id"]) == 1
