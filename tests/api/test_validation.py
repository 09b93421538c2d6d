"""Every rule of the seed's parameter table: a break is a 400 naming the field and rule."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from api import create_app
from tests.api.conftest import UNSERVED_QUEUES
from tests.conftest import data_uri, png_bytes, settings_from

VALID = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64))}

BROKEN = [
    ("app_id", None, "missing"),
    ("app_id", 5, "string_type"),
    ("image", None, "missing"),
    ("image", "ftp://example.com/a.png", "value_error"),
    ("image", "data:text/plain;base64,aGk=", "value_error"),
    ("image", "/etc/passwd", "value_error"),
    ("prompt", 5, "string_type"),
    ("prompt", "x" * 2001, "string_too_long"),
    ("negative_prompt", ["a"], "string_type"),
    ("guidance_scale", 1.99, "greater_than_equal"),
    ("guidance_scale", 25.01, "less_than_equal"),
    ("guidance_scale", "7.5", "float_type"),
    ("batch", 0, "greater_than_equal"),
    ("batch", 5, "less_than_equal"),
    ("batch", 1.5, "int_type"),
    ("batch", "2", "int_type"),
    ("batch", True, "int_type"),
    ("strength", 0, "greater_than"),
    ("strength", -0.1, "greater_than"),
    ("strength", 1.01, "less_than_equal"),
    ("height", 448, "greater_than_equal"),
    ("height", 1600, "less_than_equal"),
    ("height", 1000, "multiple_of"),
    ("height", "1024", "int_type"),
    ("width", 256, "greater_than_equal"),
    ("width", 1600, "less_than_equal"),
    ("width", 520, "multiple_of"),
    ("celery", "true", "bool_type"),
    ("celery", 1, "bool_type"),
    ("inference_type", "t4", "enum"),
    ("ref_id", 7, "string_type"),
    ("seed", -1, "greater_than_equal"),
    ("seed", 2**32, "less_than_equal"),
    ("colour", "blue", "extra_forbidden"),
    ("webhook", "", "string_too_short"),
    ("webhook", "ftp://example.com/hook", "value_error"),
    ("webhook", "https://example.com/" + "x" * 2048, "string_too_long"),
    ("webhook", 5, "string_type"),
    ("webhook_events_filter", ["finished"], "enum"),
    ("webhook_events_filter", [], "too_short"),
    ("webhook_events_filter", "completed", "list_type"),
]


def post(client: FlaskClient, body: dict[str, Any], auth: dict[str, str]) -> Any:
    return client.post("/getImageToImage", json=body, headers=auth)


@pytest.mark.parametrize(("field", "value", "rule"), BROKEN)
def test_broken_rule_is_400_naming_field_and_rule(
    client: FlaskClient, auth: dict[str, str], field: str, value: Any, rule: str
) -> None:
    body = dict(VALID)
    if value is None:
        body.pop(field)
    else:
        body[field] = value
    response = post(client, body, auth)
    assert response.status_code == 400
    envelope = response.json
    assert envelope["status"] == "FAILED"
    (error,) = envelope["error_data"]["errors"]
    assert error["field"].split(".")[0] == field  # "webhook_events_filter.0" names the item
    assert envelope["error"].startswith(f"{error['field']}: ")
    assert error["rule"] == rule


ACCEPTED_LIMITS = [
    ("guidance_scale", 2),
    ("guidance_scale", 25),
    ("batch", 1),
    ("batch", 4),
    ("strength", 1),
    ("strength", 0.025),  # tiny-sd: 10 default steps, max_steps 40
    ("height", 512),
    ("height", 1536),
    ("width", 512),
    ("width", 1536),
    ("inference_type", "h100"),
    ("seed", 0),
]


@pytest.mark.parametrize(("field", "value"), ACCEPTED_LIMITS)
def test_values_at_the_limits_pass_validation(
    client: FlaskClient, auth: dict[str, str], field: str, value: Any
) -> None:
    response = post(client, {**VALID, field: value}, auth)
    # Validation passed: the request got as far as looking for a worker (none serves here).
    assert response.status_code == 503
    assert response.json["error"].startswith("inference_type: no live worker")


@pytest.mark.parametrize("strength", [0.024, 1e-8, 1e-9, 5e-324])
def test_a_strength_needing_more_than_max_steps_is_400_naming_strength(
    client: FlaskClient, auth: dict[str, str], strength: float
) -> None:
    response = post(client, {**VALID, "strength": strength}, auth)
    assert response.status_code == 400
    envelope = response.json
    assert envelope["error"] == (
        "strength: must be at least 0.025 for 'tiny-sd': a smaller strength needs more than "
        "its max_steps (40) for one denoising step"
    )
    assert envelope["error_data"]["errors"] == [
        {"field": "strength", "rule": "min_for_model", "message": envelope["error"][10:]}
    ]


def test_several_broken_fields_are_all_named(client: FlaskClient, auth: dict[str, str]) -> None:
    response = post(client, {**VALID, "batch": 9, "width": 100}, auth)
    assert response.status_code == 400
    fields = {e["field"] for e in response.json["error_data"]["errors"]}
    assert fields == {"batch", "width"}


def test_body_that_is_not_json_is_400(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.post("/getImageToImage", data=b"{not json", headers=auth)
    assert response.status_code == 400
    assert response.json["error_data"]["errors"][0]["rule"] == "json_invalid"


def test_body_that_is_not_an_object_is_400(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.post("/getImageToImage", json=[1, 2], headers=auth)
    assert response.status_code == 400
    assert response.json["error"].startswith("body: ")


def test_data_uri_that_is_not_base64_is_400(client: FlaskClient, auth: dict[str, str]) -> None:
    response = post(client, {**VALID, "image": "data:image/png;base64,@@@not-base64"}, auth)
    assert response.status_code == 400
    assert response.json["error"] == "image: the data URI is not valid base64"


def test_data_uri_that_is_not_an_image_is_400(client: FlaskClient, auth: dict[str, str]) -> None:
    response = post(client, {**VALID, "image": "data:image/png;base64,aGVsbG8gd29ybGQ="}, auth)
    assert response.status_code == 400
    assert "does not hold a PNG, JPEG, WebP, GIF or BMP image" in response.json["error"]


def test_unknown_app_id_is_404(client: FlaskClient, auth: dict[str, str]) -> None:
    response = post(client, {**VALID, "app_id": "no-such-model"}, auth)
    assert response.status_code == 404
    assert response.json["error"].startswith("app_id: unknown model 'no-such-model'")


def test_model_not_allowed_on_the_gpu_class_is_400(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    response = post(client, {**VALID, "app_id": "sdxl", "inference_type": "a10g"}, auth)
    assert response.status_code == 400
    assert response.json["error"] == "inference_type: 'sdxl' runs only on a100, h100"


def test_body_over_the_cap_is_413(client: FlaskClient, auth: dict[str, str]) -> None:
    huge = data_uri(b"\x89PNG\r\n\x1a\n" + bytes(300_000))
    response = post(client, {**VALID, "image": huge}, auth)
    assert response.status_code == 413
    assert response.json["status"] == "FAILED"
    assert response.json["error"]


def test_webhooks_are_refused_while_no_secret_is_set(
    stack_env: dict[str, str], auth: dict[str, str]
) -> None:
    """Unsigned webhooks would be forgeable, so the server refuses to send them."""
    env = {k: v for k, v in stack_env.items() if k != "EASEL_WEBHOOK_SECRET"}
    client = create_app(settings_from(env, queues=UNSERVED_QUEUES)).test_client()
    body = {
        "app_id": "tiny-sd",
        "image": data_uri(png_bytes()),
        "webhook": "https://example.com/hook",
    }
    answer = post(client, body, auth)
    assert answer.status_code == 400
    assert answer.json["error"] == "webhook: webhooks are off: EASEL_WEBHOOK_SECRET is unset"


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/a.png", "http://[::ffff:127.0.0.1]/a.png", "http://0x7f.1/a.png"]
)
def test_private_image_urls_are_400_at_submit(
    client: FlaskClient, auth: dict[str, str], url: str
) -> None:
    answer = post(client, {"app_id": "tiny-sd", "image": url}, auth)
    assert answer.status_code == 400
    assert answer.json["error_data"]["errors"][0]["field"] == "image"
    assert answer.json["error_data"]["errors"][0]["rule"] == "ssrf"
