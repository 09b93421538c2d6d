"""Qolaba's request and answer shapes through the Flask app: its status calls, header,
field names and switches, and the unknown-fields switch for migrating clients."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from api import create_app
from shared.jobs import connect_redis
from shared.models import InferenceType
from shared.settings import Settings
from tests.conftest import API_KEY, data_uri, png_bytes, seemingly_served, settings_from

TOKEN = secrets.token_hex(4)
QUEUES = {gpu.value: f"qolabatest-{TOKEN}.{gpu.value}" for gpu in InferenceType}
BODY: dict[str, Any] = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True}
BEARER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def served(stack_env: dict[str, str]) -> Iterator[Settings]:
    settings = settings_from(stack_env, queues=json.dumps(QUEUES))
    with seemingly_served(settings, list(QUEUES.values())):
        yield settings
    connect_redis(settings).delete(*QUEUES.values())  # nobody will ever consume them


def client_with(stack_env: dict[str, str], **overrides: str) -> FlaskClient:
    return create_app(
        settings_from(stack_env, queues=json.dumps(QUEUES), **overrides)
    ).test_client()


@pytest.fixture
def client(stack_env: dict[str, str], served: Settings) -> FlaskClient:
    return client_with(stack_env, sync_wait_s="0.1")  # nobody runs these jobs


def test_a_pending_job_is_200_with_its_app_id_and_a_location(client: FlaskClient) -> None:
    answer = client.post("/getImageToImage", json=BODY, headers=BEARER)
    assert answer.status_code == 200
    assert answer.json["status"] == "PENDING" and answer.json["app_id"] == "tiny-sd"
    assert answer.headers["Location"] == f"/tasks/{answer.json['task_id']}"


def test_both_status_calls_take_qolaba_s_bodies(client: FlaskClient) -> None:
    task_id = client.post("/getImageToImage", json=BODY, headers=BEARER).json["task_id"]
    for body in ({"task_id": task_id, "ref_id": ""}, {"task_id": task_id}):
        answer = client.post("/tasks", json=body, headers=BEARER)
        assert answer.status_code == 200 and answer.json["task_id"] == task_id
    for body in ({"id": task_id, "refID": ""}, {"id": task_id}):
        answer = client.post("/getImage", json=body, headers=BEARER)
        assert answer.status_code == 200 and answer.json["task_id"] == task_id
    missing = client.post("/getImage", json={"refID": ""}, headers=BEARER)
    assert missing.status_code == 400 and missing.json["error"].startswith("id: ")


def test_x_api_key_authenticates_as_bearer_does(client: FlaskClient) -> None:
    answer = client.post("/getImageToImage", json=BODY, headers={"X-API-Key": API_KEY})
    assert answer.status_code == 200
    assert client.get(f"/tasks/{answer.json['task_id']}", headers=BEARER).status_code == 200
    refused = client.post("/getImageToImage", json=BODY, headers={"X-API-Key": "wrong"})
    assert refused.status_code == 401


def test_file_url_is_the_image_and_both_at_once_is_a_400(client: FlaskClient) -> None:
    body = {**BODY, "file_url": BODY["image"]}
    del body["image"]
    answer = client.post("/getImagetoImage", json=body, headers=BEARER)
    assert answer.status_code == 200
    assert answer.json["input"]["image"].startswith("data:image/png;base64,<")
    assert "file_url" not in answer.json["input"]
    both = client.post("/getImageToImage", json={**BODY, "file_url": BODY["image"]}, headers=BEARER)
    assert both.status_code == 400
    assert (
        both.json["error"]
        == "file_url: Value error, image and file_url name the same image; send one of them"
    )


@pytest.mark.parametrize("value", ["True", "true", "1", "False", "false", "0"])
def test_multipart_booleans_read_as_generated_clients_send_them(
    client: FlaskClient, value: str
) -> None:
    import io

    data = {"app_id": "tiny-sd", "celery": value, "image": (io.BytesIO(png_bytes(64, 64)), "a.png")}
    answer = client.post(
        "/getImageToImage", data=data, headers=BEARER, content_type="multipart/form-data"
    )
    if value in ("True", "true", "1"):
        assert answer.status_code == 200 and answer.json["input"]["celery"] is True
    else:  # a sync submit: it waits (0.1 s here, for nobody), then answers PENDING
        assert answer.status_code == 200 and answer.json["input"]["celery"] is False


def test_json_booleans_stay_strict(client: FlaskClient) -> None:
    answer = client.post("/getImageToImage", json={**BODY, "celery": "True"}, headers=BEARER)
    assert answer.status_code == 400 and answer.json["error"].startswith("celery: ")


def test_unknown_fields_are_a_400_unless_the_operator_ignores_them(
    stack_env: dict[str, str], served: Settings
) -> None:
    extras = {**BODY, "parameters": {}, "init_parameters": {}, "colour": "red"}
    strict = client_with(stack_env).post("/getImageToImage", json=extras, headers=BEARER)
    assert strict.status_code == 400 and "unknown field" in strict.json["error"]
    lenient = client_with(stack_env, unknown_fields="ignore")
    answer = lenient.post("/getImageToImage", json=extras, headers=BEARER)
    assert answer.status_code == 200
    assert answer.json["warnings"] == [
        f"{name}: unknown field, ignored (EASEL_UNKNOWN_FIELDS=ignore)"
        for name in ("colour", "init_parameters", "parameters")
    ]
    clean = lenient.post("/getImageToImage", json=BODY, headers=BEARER)
    assert clean.json["warnings"] is None
    still_checked = lenient.post("/getImageToImage", json={**BODY, "batch": 9}, headers=BEARER)
    assert still_checked.status_code == 400 and still_checked.json["error"].startswith("batch: ")
