"""CompletionHub and WaitCap on a real Valkey: one subscription wakes every waiter, a lost
subscription wakes them all, and waits per key are capped and given back."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from api import waits
from api.waits import CompletionHub, WaitCap
from shared.errors import TooManyRequests
from shared.jobs import DONE_CHANNEL, JobStore, connect_redis, key
from shared.models import JobRecord, JobState
from shared.settings import Settings
from tests.conftest import job_record


@pytest.fixture
def client(stack_settings: Settings) -> redis.Redis:
    return connect_redis(stack_settings)


@pytest.fixture
def store(client: redis.Redis, stack_settings: Settings) -> JobStore:
    return JobStore(client, stack_settings.job_ttl_s)


def subscribers(client: redis.Redis) -> int:
    [(_, count)] = client.pubsub_numsub(DONE_CHANNEL)
    return int(count)


def start_waiters(hub: CompletionHub, task_id: str, count: int) -> list[JobRecord]:
    results: list[JobRecord] = []
    for _ in range(count):
        threading.Thread(target=lambda: results.append(hub.wait(task_id, 30)), daemon=True).start()
    deadline = time.monotonic() + 10
    while hub.waiting < count:
        assert time.monotonic() < deadline, "the waiters never registered"
        time.sleep(0.01)
    return results


def until(check: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_subscription_wakes_every_waiter_of_a_finished_job(
    store: JobStore, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waits, "RECHECK_S", 60.0)  # only the published end can wake them
    record = job_record(str(uuid.uuid4()))
    store.create(record)
    before = subscribers(client)
    hub = CompletionHub(store)
    results = start_waiters(hub, record.task_id, 5)
    until(lambda: subscribers(client) == before + 1)  # one connection, however many waiters
    store.finish(record.model_copy(update={"state": JobState.SUCCEEDED, "finished_at": 1.0}))
    until(lambda: len(results) == 5)
    assert {r.state for r in results} == {JobState.SUCCEEDED}
    assert hub.waiting == 0


def test_a_lost_subscription_wakes_every_waiter_to_read_again(
    store: JobStore, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waits, "RECHECK_S", 60.0)
    monkeypatch.setattr(waits, "RESUBSCRIBE_S", 0.05)
    record = job_record(str(uuid.uuid4()))
    store.create(record)
    before = subscribers(client)
    hub = CompletionHub(store)
    results = start_waiters(hub, record.task_id, 3)
    until(lambda: subscribers(client) == before + 1)
    time.sleep(0.3)  # past the wake-up that follows subscribing
    # The job ends while nobody hears it: a bare save, with no publish.
    store.save(record.model_copy(update={"state": JobState.FAILED, "error": "x"}))
    time.sleep(0.2)
    assert results == []
    client.client_kill_filter(_type="pubsub")  # what a Redis restart does to the subscription
    until(lambda: len(results) == 3)
    assert {r.state for r in results} == {JobState.FAILED}


def test_a_wait_returns_the_latest_record_at_its_deadline(store: JobStore) -> None:
    record = job_record(str(uuid.uuid4()))
    store.create(record)
    started = time.monotonic()
    assert CompletionHub(store).wait(record.task_id, 0.3).state is JobState.QUEUED
    assert time.monotonic() - started >= 0.3


def test_the_wait_cap_refuses_past_it_and_gives_slots_back(client: redis.Redis) -> None:
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    cap = WaitCap(client, 2)
    with cap.slot(owner, 30), cap.slot(owner, 30):
        with pytest.raises(TooManyRequests) as refused, cap.slot(owner, 30):
            pass
        assert refused.value.retry_after_s == waits.WAIT_RETRY_S
        assert refused.value.data == {"max_waits": 2}
        assert client.zcard(key("waits", owner)) == 2
        assert 0 < client.ttl(key("waits", owner)) <= 30 + waits.WAIT_SLACK_S + 1
    assert client.zcard(key("waits", owner)) == 0
    with cap.slot(owner, 30):
        pass


def test_a_wait_slot_left_by_a_dead_process_expires(client: redis.Redis) -> None:
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    client.zadd(key("waits", owner), {"died": time.time() - 1})  # its wait ended a second ago
    with WaitCap(client, 1).slot(owner, 30):
        assert client.zrange(key("waits", owner), 0, -1) != [b"died"]
