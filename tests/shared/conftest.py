"""The session's real Valkey, as the job store's tests use it."""

from __future__ import annotations

import pytest
import redis

from shared.jobs import JobStore, connect_redis
from shared.settings import Settings


@pytest.fixture
def client(stack_settings: Settings) -> redis.Redis:
    return connect_redis(stack_settings)


@pytest.fixture
def store(client: redis.Redis, stack_settings: Settings) -> JobStore:
    return JobStore(client, stack_settings.job_ttl_s)
