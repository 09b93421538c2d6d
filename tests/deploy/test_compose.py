"""docker-compose.yml, checked offline: no Docker engine runs here."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.models import InferenceType
from shared.settings import DEFAULT_QUEUES, Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose, schema)


def test_schema_check_would_catch_a_mistake(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    broken = {**compose, "services": {**compose["services"], "api": {"image": 5, "portz": []}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(schema_file.read_text()))


def test_one_gpu_worker_per_class_on_its_own_queue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for gpu in InferenceType:
        worker = services[f"worker-{gpu}"]
        assert worker["command"] == ["worker", "--gpu", gpu.value]
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    queues = json.loads(services["api"]["environment"]["EASEL_QUEUES"])
    assert queues == {str(k): v for k, v in DEFAULT_QUEUES.items()}


def test_redis_keeps_an_append_only_file_and_flower_is_there(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    durable = {"--appendonly": "yes", "--appendfsync": "everysec"}
    durable["--maxmemory-policy"] = "noeviction"  # a full Redis refuses, never drops a job
    for flag, value in durable.items():
        assert command[command.index(flag) + 1] == value, flag
    assert "flower" in compose["services"]["flower"]["command"]
    assert {"api", "seaweedfs"} <= set(compose["services"])


def test_webhooks_are_delivered_by_their_own_service_with_the_shared_secret(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    webhooks = services["webhooks"]
    assert webhooks["command"] == ["webhooks"] and webhooks["image"] == "easel-worker:latest"
    assert webhooks["profiles"] == ["webhooks"]  # it cannot run without the secret
    for name in ("api", "webhooks", "worker-a10g"):
        assert "EASEL_WEBHOOK_SECRET" in services[name]["environment"]
        assert "EASEL_KEY_HASH_SECRET" in services[name]["environment"]


def test_an_empty_variable_is_an_unset_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose passes ${EASEL_WEBHOOK_SECRET:-} as an empty string when it is not set."""
    for name in [n for n in os.environ if n.startswith("EASEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EASEL_WEBHOOK_SECRET", "")
    assert Settings().webhook_secret is None
