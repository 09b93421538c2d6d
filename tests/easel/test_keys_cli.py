"""`easel keys create|list|revoke` in-process, against the session's Valkey: the key is
printed once and works; listing never shows it; revoking refuses it on the next request."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from typing import cast

import pytest

from api import create_app
from easel.cli import main
from shared.jobs import connect_redis
from shared.keys import KeyStore
from tests.conftest import settings_from


@pytest.fixture(autouse=True)
def stack_environment(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads EASEL_* from the environment, as a user's shell would give them."""
    for name in list(os.environ):
        if name.startswith("EASEL_"):
            monkeypatch.delenv(name)
    for name, value in stack_env.items():
        monkeypatch.setenv(name, value)


def easel(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``easel ARGV``; its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_create_prints_a_working_key_once_list_never_shows_it_revoke_refuses_it(
    capsys: pytest.CaptureFixture[str], stack_env: dict[str, str]
) -> None:
    name = f"cli-{secrets.token_hex(4)}"
    status, out, err = easel(capsys, "keys", "create", "--name", name, "--rate", "30/minute",
                             "--max-inflight", "3")  # fmt: skip
    assert status == 0
    (api_key,) = out.split()  # stdout carries the key and nothing else
    assert api_key.startswith("esl_")
    key_id = err.split()[2]
    assert f"created key {key_id} ({name}, 30/minute, at most 3 in flight, weight 1)" in err

    http = create_app(settings_from(stack_env)).test_client()
    headers = {"Authorization": f"Bearer {api_key}"}
    assert http.get("/tasks", headers=headers).status_code == 200

    for listing in (["keys", "list"], ["keys", "list", "--json"]):
        status, out, _ = easel(capsys, *listing)
        assert status == 0 and api_key not in out and api_key[4:] not in out
        assert key_id in out and name in out
    status, out, _ = easel(capsys, "keys", "list", "--json")
    (mine,) = [json.loads(line) for line in out.splitlines() if json.loads(line)["id"] == key_id]
    assert (mine["rate"], mine["max_inflight"], mine["revoked_at"]) == ("30/minute", 3, None)
    assert "key_hash" not in mine

    status, out, _ = easel(capsys, "keys", "revoke", key_id)
    assert status == 0 and out.startswith(f"revoked {key_id} ({name}) at ")
    assert http.get("/tasks", headers=headers).status_code == 401
    status, out, _ = easel(capsys, "keys", "list")
    (row,) = [line for line in out.splitlines() if line.startswith(key_id)]
    assert row.split()[-1] != "-"  # the REVOKED column has a time


def test_a_weight_is_set_at_create_listed_changed_and_bounded(
    capsys: pytest.CaptureFixture[str], stack_env: dict[str, str]
) -> None:
    name = f"weighted-{secrets.token_hex(4)}"
    status, _, err = easel(capsys, "keys", "create", "--name", name, "--weight", "3")
    assert status == 0 and "weight 3)" in err
    key_id = err.split()[2]
    status, out, _ = easel(capsys, "keys", "list")
    header, *rows = out.splitlines()
    (row,) = [line for line in rows if line.startswith(key_id)]
    assert row.split()[header.split().index("WEIGHT")] == "3"
    status, out, _ = easel(capsys, "keys", "weight", key_id, "5")
    assert status == 0 and out.strip() == f"key {key_id} ({name}) now has weight 5"
    store = KeyStore(connect_redis(settings_from(stack_env)), settings_from(stack_env))
    assert store.get(key_id).weight == 5
    for bad in (["weight", key_id, "0"], ["create", "--name", "w", "--weight", "1001"]):
        status, _, err = easel(capsys, "keys", *bad)
        assert status == 2 and "weight" in err
    assert store.get(key_id).weight == 5


def test_revoking_an_unknown_id_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = easel(capsys, "keys", "revoke", "no-such-id")
    assert status == 1
    assert "no API key with id 'no-such-id'" in err


def test_a_rate_that_does_not_parse_exits_2_and_creates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"bad-{secrets.token_hex(4)}"
    status, out, err = easel(capsys, "keys", "create", "--name", name, "--rate", "lots")
    assert (status, out) == (2, "")
    assert "rate" in err
    _, listing, _ = easel(capsys, "keys", "list")
    assert name not in listing


def test_defaults_come_from_settings(
    capsys: pytest.CaptureFixture[str], stack_env: dict[str, str]
) -> None:
    status, _, err = easel(capsys, "keys", "create", "--name", "defaults")
    assert status == 0
    rate, cap = stack_env["EASEL_DEFAULT_RATE_LIMIT"], stack_env["EASEL_DEFAULT_MAX_INFLIGHT"]
    assert f"(defaults, {rate}, at most {cap} in flight, weight 1)" in err


def whsec_in(text: str) -> str:
    """The one Standard Webhooks secret in ``text``."""
    (secret,) = cast(list[str], re.findall(r"whsec_[A-Za-z0-9+/=]+", text))
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    return secret


def test_create_tells_the_keys_webhook_secret_which_signs_its_deliveries(
    capsys: pytest.CaptureFixture[str], stack_env: dict[str, str]
) -> None:
    status, out, err = easel(capsys, "keys", "create", "--name", "hooks")
    assert status == 0 and "whsec_" not in out  # stdout stays the key alone
    key_id, secret = err.split()[2], whsec_in(err)
    status, out, _ = easel(capsys, "keys", "webhook-secret", key_id)
    assert (status, out) == (0, f"{secret}\n")  # shown again: Easel derives it to sign
    settings = settings_from(stack_env)
    store = KeyStore(connect_redis(settings), settings)
    assert store.webhook_secret(store.get(key_id)) == secret
    _, out, _ = easel(capsys, "keys", "list", "--json")
    assert "webhook_nonce" not in out and secret not in out


def test_rotate_prints_a_new_secret_and_the_old_one_stops_verifying(
    capsys: pytest.CaptureFixture[str], stack_env: dict[str, str]
) -> None:
    _, _, err = easel(capsys, "keys", "create", "--name", "rotating")
    key_id, old = err.split()[2], whsec_in(err)
    status, out, err = easel(capsys, "keys", "webhook-secret", "--rotate", key_id)
    assert status == 0 and "no longer verifies" in err
    new = whsec_in(out)
    assert new != old and out == f"{new}\n"
    _, shown, _ = easel(capsys, "keys", "webhook-secret", key_id)
    assert shown == out


@pytest.mark.parametrize(("key_id", "says"), [
    ("no-such-id", "no API key with id 'no-such-id'"),
    ("bootstrap", "EASEL_WEBHOOK_SECRET"),
])  # fmt: skip
def test_webhook_secret_of_an_unknown_or_the_bootstrap_key_exits_1(
    capsys: pytest.CaptureFixture[str], key_id: str, says: str
) -> None:
    for argv in (["webhook-secret", key_id], ["webhook-secret", "--rotate", key_id]):
        status, out, err = easel(capsys, "keys", *argv)
        assert (status, out) == (1, "") and says in err
