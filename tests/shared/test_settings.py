"""One typed settings object, read from EASEL_* only when built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.models import InferenceType
from shared.settings import Settings


def test_defaults_give_one_queue_per_gpu_class(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert {settings.queue_for(t) for t in InferenceType} == {
        "easel.a10g",
        "easel.a100",
        "easel.h100",
    }
    assert settings.sync_wait_s == 60
    assert settings.max_body_bytes == 32 * 1024 * 1024


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "EASEL_QUEUES", '{"a10g": "gpu-small", "a100": "gpu-big", "h100": "gpu-fast"}'
    )
    monkeypatch.setenv("EASEL_WORKER_GPU", "h100")
    monkeypatch.setenv("EASEL_MODEL_DIR", "/models")
    monkeypatch.setenv("EASEL_BOOTSTRAP_API_KEY", "sk-very-secret-123")
    settings = Settings()
    assert settings.queue_for(InferenceType.H100) == "gpu-fast"
    assert settings.worker_gpu is InferenceType.H100
    assert settings.model_dir == Path("/models")
    assert settings.bootstrap_api_key is not None
    assert "sk-very-secret-123" not in repr(settings)  # secrets stay out of logs


def test_bad_values_are_rejected_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_SYNC_WAIT_S", "soon")
    with pytest.raises(ValidationError, match="sync_wait_s"):
        Settings()


def test_nothing_reads_the_environment_at_import() -> None:
    probe = (
        "import shared.settings, shared.jobs, shared.storage, api, worker.celery_app; print('ok')"
    )
    env = {"EASEL_SYNC_WAIT_S": "not-a-number", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_broker_is_the_redis_unless_set_apart() -> None:
    from shared.queues import celery_config

    same = Settings(redis_url="redis://r:6379/0")
    assert celery_config(same)["broker_url"] == "redis://r:6379/0"
    apart = Settings(redis_url="redis://r:6379/0", broker_url="amqp://mq:5672//")
    assert celery_config(apart)["broker_url"] == "amqp://mq:5672//"
