"""Bearer keys: a request without a valid one is 401 and touches nothing; an address that
keeps failing gets 429; a placeholder or short secret stops the process at start."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import ValidationError

from api import create_app
from tests.conftest import API_KEY, settings_from

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


# --- repeated failures from one address --------------------------------------------------


def fresh_address() -> str:
    """A client address no other test uses, so each test starts with a whole budget."""
    return "10." + ".".join(str(secrets.randbelow(256)) for _ in range(3))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """This module's 401s are spent from an address of their own, not from 127.0.0.1."""
    http = app.test_client()
    http.environ_base["REMOTE_ADDR"] = fresh_address()
    return http


@pytest.fixture
def strict(stack_env: dict[str, str]) -> FlaskClient:
    """An API where an address may fail authentication 3 times a minute."""
    return create_app(settings_from(stack_env, auth_failure_limit="3/minute")).test_client()


def get_tasks(http: FlaskClient, address: str, key: str, forwarded: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return http.get("/tasks", headers=headers, environ_base={"REMOTE_ADDR": address})


def test_an_address_past_its_failed_authentications_gets_429_until_the_window_slides(
    strict: FlaskClient,
) -> None:
    address = fresh_address()
    for _ in range(2):
        assert get_tasks(strict, address, "wrong-key").status_code == 401
    assert get_tasks(strict, address, API_KEY).status_code == 200  # a valid key still works
    assert get_tasks(strict, address, "wrong-key").status_code == 401  # the third failure
    refused = get_tasks(strict, address, "wrong-key")
    assert refused.status_code == 429
    assert refused.json["status"] == "FAILED"
    assert refused.json["error"].startswith(
        "authentication: too many failed attempts from this address (at most 3 per 1 minute)"
    )
    assert refused.json["error_data"]["limit"] == "3 per 1 minute"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Refused with a valid key too: a 200 here would tell a guesser its guess was right.
    assert get_tasks(strict, address, API_KEY).status_code == 429
    assert (
        strict.post("/getImageToImage", json={}, environ_base={"REMOTE_ADDR": address}).status_code
        == 429
    )
    assert get_tasks(strict, fresh_address(), API_KEY).status_code == 200  # others go on
    assert strict.get("/health", environ_base={"REMOTE_ADDR": address}).status_code == 200


def test_a_missing_key_counts_as_a_failure(strict: FlaskClient) -> None:
    address = fresh_address()
    for _ in range(3):
        assert strict.get("/tasks", environ_base={"REMOTE_ADDR": address}).status_code == 401
    assert strict.get("/tasks", environ_base={"REMOTE_ADDR": address}).status_code == 429


def test_behind_the_proxy_the_forwarded_address_is_counted_and_a_forged_one_is_not(
    strict: FlaskClient,
) -> None:
    proxy, client, neighbour = fresh_address(), fresh_address(), fresh_address()
    for forged in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):  # the proxy appends what it saw
        answer = get_tasks(strict, proxy, "wrong-key", forwarded=f"{forged}, {client}")
        assert answer.status_code == 401
    assert get_tasks(strict, proxy, API_KEY, forwarded=f"9.9.9.9, {client}").status_code == 429
    assert get_tasks(strict, proxy, API_KEY, forwarded=neighbour).status_code == 200


def test_a_forwarded_value_that_is_no_address_counts_against_the_peer(
    strict: FlaskClient,
) -> None:
    peer = fresh_address()
    for junk in ("unknown", "", "10.0.0.1:8080"):
        assert get_tasks(strict, peer, "wrong-key", forwarded=junk).status_code == 401
    assert get_tasks(strict, peer, API_KEY).status_code == 429


def test_without_trusted_proxies_the_forwarded_header_is_ignored(
    stack_env: dict[str, str],
) -> None:
    settings = settings_from(stack_env, auth_failure_limit="2/minute", trusted_proxy_hops="0")
    http = create_app(settings).test_client()
    address = fresh_address()
    for forged in ("1.1.1.1", "2.2.2.2"):
        assert get_tasks(http, address, "wrong-key", forwarded=forged).status_code == 401
    assert get_tasks(http, address, API_KEY, forwarded="3.3.3.3").status_code == 429


def test_a_bad_failure_limit_fails_at_start(stack_env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="couldn't parse rate limit string"):
        create_app(settings_from(stack_env, auth_failure_limit="twenty a minute"))


# --- weak secrets are refused at start ----------------------------------------------------

WEBHOOK_32 = "whsec_" + base64.b64encode(b"k" * 32).decode()
WEAK = [
    ("bootstrap_api_key", "change-me", "EASEL_BOOTSTRAP_API_KEY is a placeholder"),
    ("bootstrap_api_key", "CHANGE-ME-please-1234567", "EASEL_BOOTSTRAP_API_KEY is a placeholder"),
    ("bootstrap_api_key", "fifteen-chars-x", "EASEL_BOOTSTRAP_API_KEY must be at least 16"),
    (
        "key_hash_secret",
        "change-me-to-a-long-random-string",
        "EASEL_KEY_HASH_SECRET is a placeholder",
    ),
    ("key_hash_secret", "easel-dev-only-change-me", "EASEL_KEY_HASH_SECRET is a placeholder"),
    ("key_hash_secret", "s" * 31, "EASEL_KEY_HASH_SECRET must be at least 32"),
    ("webhook_secret", "whsec_...", "EASEL_WEBHOOK_SECRET must be 'whsec_' \\+ base64"),
    ("webhook_secret", WEBHOOK_32.removeprefix("whsec_"), "EASEL_WEBHOOK_SECRET must be"),
    ("webhook_secret", "whsec_" + base64.b64encode(b"k" * 23).decode(), "at least 24 random"),
    ("webhook_secret", "whsec_not base64!", "EASEL_WEBHOOK_SECRET must be"),
]


@pytest.mark.parametrize(("name", "value", "message"), WEAK)
def test_a_placeholder_or_short_secret_is_refused_naming_its_variable(
    stack_env: dict[str, str], name: str, value: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        settings_from(stack_env, **{name: value})
    assert value not in str(refused.value)  # the refusal is logged: it never echoes the value


def test_strong_secrets_are_taken(stack_env: dict[str, str]) -> None:
    settings = settings_from(
        stack_env, bootstrap_api_key="k" * 16, key_hash_secret="s" * 32, webhook_secret=WEBHOOK_32
    )
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == WEBHOOK_32
