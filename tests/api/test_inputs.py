"""Inline images through the Flask app: they wait in S3, never in Redis; each is bounded, and
so are a key's unfinished ones together and the large bodies read at once."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.auth import owner_id
from shared.jobs import connect_redis, key
from shared.models import InferenceType
from shared.settings import Settings
from shared.storage import Storage
from tests.conftest import API_KEY, data_uri, png_bytes, seemingly_served, settings_from


def noise_png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), secrets.token_bytes(width * height * 3)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


TOKEN = secrets.token_hex(4)
QUEUES = {gpu.value: f"inputtest-{TOKEN}.{gpu.value}" for gpu in InferenceType}
IMAGE = noise_png(300, 200)  # about 180 KB: it does not compress
BODY: dict[str, Any] = {"app_id": "tiny-sd", "image": data_uri(IMAGE), "celery": True}


@pytest.fixture(scope="module")
def settings(stack_env: dict[str, str]) -> Settings:
    return settings_from(stack_env, queues=json.dumps(QUEUES))


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[None]:
    with seemingly_served(settings, list(QUEUES.values())):
        yield
    connect_redis(settings).delete(*QUEUES.values())


def app_with(stack_env: dict[str, str], **overrides: str) -> Flask:
    return create_app(settings_from(stack_env, queues=json.dumps(QUEUES), **overrides))


@pytest.fixture
def client(stack_env: dict[str, str], served: None) -> FlaskClient:
    return app_with(stack_env).test_client()


def auth(api_key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def largest_value(client: redis.Redis, task_id: str) -> int:
    """The size of the largest string Redis holds for this job."""
    sizes = [client.strlen(name) for name in client.scan_iter(f"*{task_id}*")]
    return max(sizes) if sizes else 0


def test_an_inline_image_waits_in_s3_and_redis_holds_only_a_summary(
    client: FlaskClient, settings: Settings
) -> None:
    answer = client.post("/getImageToImage", json=BODY, headers=auth())
    assert answer.status_code == 200, answer.json
    task_id = answer.json["task_id"]
    assert Storage(settings).get(Storage.input_key(task_id)) == IMAGE
    redis_client = connect_redis(settings)
    assert largest_value(redis_client, task_id) < 4096 < len(IMAGE)
    record = json.loads(redis_client.get(key("job", task_id)) or b"{}")
    assert record["params"]["image_url"] is None
    assert record["input"]["image"].startswith(f"data:image/png;base64,<{len(IMAGE)} bytes, ")


def test_a_multipart_file_part_waits_in_s3_as_sent(client: FlaskClient, settings: Settings) -> None:
    import io

    data = {"app_id": "tiny-sd", "celery": "true", "image": (io.BytesIO(IMAGE), "a.png")}
    answer = client.post(
        "/getImageToImage", data=data, headers=auth(), content_type="multipart/form-data"
    )
    assert answer.status_code == 200, answer.json
    assert Storage(settings).get(Storage.input_key(answer.json["task_id"])) == IMAGE


def test_canceling_a_queued_job_deletes_its_input(client: FlaskClient, settings: Settings) -> None:
    task_id = client.post("/getImageToImage", json=BODY, headers=auth()).json["task_id"]
    assert client.post(f"/tasks/{task_id}/cancel", headers=auth()).json["status"] == "CANCELED"
    listing = Storage(settings).client.list_objects_v2(
        Bucket=settings.s3_bucket, Prefix=Storage.input_key(task_id)
    )
    assert not listing.get("Contents")


def test_an_inline_image_over_the_image_limit_is_413_naming_image(
    stack_env: dict[str, str], served: None
) -> None:
    client = app_with(stack_env, image_max_bytes=str(len(IMAGE) - 1)).test_client()
    answer = client.post("/getImageToImage", json=BODY, headers=auth())
    assert answer.status_code == 413
    assert answer.json["error"] == (
        f"image: the inline image is {len(IMAGE)} bytes; at most {len(IMAGE) - 1} are accepted"
    )


def test_a_key_s_unfinished_inputs_are_capped_and_the_refused_job_is_not_made(
    stack_env: dict[str, str], served: None, settings: Settings
) -> None:
    api_key = f"quota-{secrets.token_hex(8)}"
    quota = str(len(IMAGE) * 2)
    app = app_with(stack_env, bootstrap_api_key=api_key, max_input_bytes_per_key=quota)
    client = app.test_client()
    for _ in range(2):
        assert client.post("/getImageToImage", json=BODY, headers=auth(api_key)).status_code == 200
    refused = client.post("/getImageToImage", json=BODY, headers=auth(api_key))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert refused.json["error"].startswith("max_input_bytes: ")
    assert len(client.get("/tasks", headers=auth(api_key)).json["tasks"]) == 2
    assert connect_redis(settings).hlen(key("inputbytes", owner_id(api_key))) == 2
    # An image by URL takes nothing from the quota.
    by_url = {**BODY, "image": "http://127.0.0.1:9/a.png"}
    assert client.post("/getImageToImage", json=by_url, headers=auth(api_key)).status_code == 200


def test_a_large_body_past_the_concurrent_limit_is_503_with_retry_after(
    stack_env: dict[str, str], served: None
) -> None:
    app = app_with(stack_env, large_body_bytes="1000", max_large_bodies="1", large_body_wait_s="0")
    services = app.extensions["easel"]
    client = app.test_client()
    assert services.large_bodies.acquire(timeout=1)  # another large body is being read
    try:
        busy = client.post("/getImageToImage", json=BODY, headers=auth())
    finally:
        services.large_bodies.release()
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
    assert busy.json["error"].startswith("body: this server is reading its limit")
    assert client.post("/getImageToImage", json=BODY, headers=auth()).status_code == 200
    small = {**BODY, "image": data_uri(png_bytes(8, 8))}  # under large_body_bytes: no turn
    assert services.large_bodies.acquire(timeout=1)
    try:
        assert client.post("/getImageToImage", json=small, headers=auth()).status_code == 200
    finally:
        services.large_bodies.release()


def test_nan_and_infinite_query_numbers_are_400_naming_them(client: FlaskClient) -> None:
    for query, field in [("cursor=nan", "cursor"), ("cursor=inf", "cursor")]:
        answer = client.get(f"/tasks?{query}", headers=auth())
        assert answer.status_code == 400 and answer.json["error"].startswith(f"{field}: ")
    answer = client.get("/tasks/some-id?wait=nan", headers=auth())
    assert answer.status_code == 400 and answer.json["error"].startswith("wait: ")
