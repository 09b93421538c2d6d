"""A Redis that requires a password, reached through EASEL_REDIS_URL as docker-compose.yml and
deploy/k8s write it (redis://:PASSWORD@host:port/0) by each of Easel's three Redis clients:
redis-py (connect_redis), Celery's broker, and Flask-Limiter's storage."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from easel.stack import free_port, redis_binary, wait_for_port
from shared.jobs import connect_redis
from shared.queues import celery_config
from shared.settings import Settings

PASSWORD = "3f9a0c1d2e4b5a6978877665544332211"  # hex, as the deploy files ask


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Redis-protocol server on loopback started as deploy/ starts Redis: --requirepass."""
    port, workdir = free_port(), tmp_path_factory.mktemp("redis-auth")
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv = [*args, "--save", "", "--requirepass", PASSWORD]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def settings_for(port: int, password: str | None = PASSWORD) -> Settings:
    auth = f":{password}@" if password else ""
    return Settings(redis_url=f"redis://{auth}127.0.0.1:{port}/0")


def test_redis_refuses_a_client_without_the_password(port: int) -> None:
    with pytest.raises(redis.AuthenticationError):
        connect_redis(settings_for(port, password=None)).ping()
    with pytest.raises(redis.AuthenticationError):
        connect_redis(settings_for(port, password="wrong")).ping()


def test_job_store_client_logs_in_with_the_url_password(port: int) -> None:
    assert connect_redis(settings_for(port)).ping() is True


def test_celery_publishes_through_the_url_password(port: int) -> None:
    settings = settings_for(port)
    app = Celery("easel-test", set_as_current=False)
    app.config_from_object(celery_config(settings))
    app.send_task("easel.test.noop", queue="easel.auth-test")
    assert connect_redis(settings).llen("easel.auth-test") == 1


def test_rate_limiter_counts_through_the_url_password(port: int) -> None:
    """Flask-Limiter builds its storage from storage_uri with this very call."""
    storage = storage_from_string(settings_for(port).redis_url)
    assert storage.check()
    limiter = MovingWindowRateLimiter(storage)
    assert limiter.hit(parse("1/minute"), "auth-test")
    assert not limiter.hit(parse("1/minute"), "auth-test")
