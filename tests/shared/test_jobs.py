"""JobStore on a real Valkey: completion signals reach every waiter; expired ids stay private."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from shared.errors import ExpiredTask, UnknownTask
from shared.jobs import JobStore, connect_redis, key
from shared.models import JobRecord, JobState, JobStatus
from shared.settings import Settings
from tests.conftest import job_record


@pytest.fixture
def client(stack_settings: Settings) -> redis.Redis:
    return connect_redis(stack_settings)


@pytest.fixture
def store(client: redis.Redis, stack_settings: Settings) -> JobStore:
    return JobStore(client, stack_settings.job_ttl_s)


def blocked_in_blmove(client: redis.Redis) -> int:
    """How many connections are blocked in a BLMOVE right now (CLIENT LIST, flag ``b``)."""
    return sum(1 for c in client.client_list() if c["cmd"] == "blmove" and "b" in c["flags"])


def test_one_finish_wakes_every_waiter_and_the_signal_stays(
    store: JobStore, client: redis.Redis
) -> None:
    record = job_record(str(uuid.uuid4()))
    store.create(record)
    results: list[JobRecord] = []

    def wait() -> None:
        results.append(store.wait(record.task_id, timeout_s=30))

    already = blocked_in_blmove(client)
    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 10
    while blocked_in_blmove(client) < already + 3:
        assert time.monotonic() < deadline, "the waiters never blocked"
        time.sleep(0.01)
    done = record.model_copy(
        update={"status": JobStatus.SUCCESS, "state": JobState.SUCCEEDED, "finished_at": 1.0}
    )
    store.finish(done)
    for waiter in waiters:
        waiter.join(timeout=30)
    assert [r.status for r in results] == [JobStatus.SUCCESS] * 3
    # The waiters rotated the signal instead of taking it: a later waiter finds it too.
    assert client.lrange(key("done", record.task_id), 0, -1) == [b"1"]


def test_an_expired_id_is_expired_only_to_its_owner(store: JobStore, client: redis.Redis) -> None:
    record = job_record(str(uuid.uuid4()), owner="alice")
    store.create(record)
    client.delete(key("job", record.task_id))  # what the job TTL does; the tomb outlives it
    with pytest.raises(ExpiredTask):
        store.get(record.task_id, "alice")
    with pytest.raises(UnknownTask) as raised:
        store.get(record.task_id, "mallory")
    assert not isinstance(raised.value, ExpiredTask)
    assert "expired" not in str(raised.value)
