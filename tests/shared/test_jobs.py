"""JobStore on a real Valkey: ends are published and counted, nothing outlives its job,
expired ids stay private."""

from __future__ import annotations

import uuid

import pytest
import redis

from shared.errors import ExpiredTask, UnknownTask
from shared.jobs import DONE_CHANNEL, JobStore, key
from shared.models import JobState
from shared.settings import Settings
from tests.conftest import job_record


def test_finish_publishes_the_id_and_counts_the_end(store: JobStore, client: redis.Redis) -> None:
    record = job_record(str(uuid.uuid4()))
    store.create(record)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(DONE_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    store.finish(record.model_copy(update={"state": JobState.SUCCEEDED, "finished_at": 1.0}))
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None and message["data"] == record.task_id.encode()
    assert client.get(key("done", record.task_id)) == b"1"
    assert 0 < client.ttl(key("done", record.task_id)) <= 300


def test_a_late_cancel_leaves_no_flag(store: JobStore, client: redis.Redis) -> None:
    record = job_record(str(uuid.uuid4()))
    store.create(record)
    store.finish(record.model_copy(update={"state": JobState.SUCCEEDED, "finished_at": 1.0}))
    assert store.cancel(record.task_id).state is JobState.SUCCEEDED
    assert not client.exists(key("cancel", record.task_id))


def test_a_running_job_s_cancel_flag_expires_with_its_record(
    store: JobStore, client: redis.Redis
) -> None:
    record = job_record(str(uuid.uuid4()))
    store.create(record)
    client.expire(key("job", record.task_id), 100)
    store.start(record.task_id, lambda r: setattr(r, "state", JobState.RUNNING) or True)
    store.cancel(record.task_id)
    assert store.cancel_requested(record.task_id)
    record_ttl = client.pttl(key("job", record.task_id))  # read first: the clock runs on
    assert 0 < client.pttl(key("cancel", record.task_id)) <= record_ttl


def test_the_owner_index_trims_expired_entries_as_it_grows(
    client: redis.Redis, stack_settings: Settings
) -> None:
    store = JobStore(client, ttl_s=60)
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    old = job_record(str(uuid.uuid4()), owner=owner)
    old.created_at -= 120  # its record would have expired by now
    store.create(old)
    new = job_record(str(uuid.uuid4()), owner=owner)
    store.create(new)
    index = key("owner", owner)
    assert client.zrange(index, 0, -1) == [new.task_id.encode()]
    assert 0 < client.ttl(index) <= 60


def test_the_input_quota_counts_unfinished_inputs_only(
    store: JobStore, client: redis.Redis
) -> None:
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    first = job_record(str(uuid.uuid4()), owner=owner)
    assert store.reserve_input(owner, first.task_id, 600, quota=1000)
    assert not store.reserve_input(owner, "second", 600, quota=1000)
    store.finish(first.model_copy(update={"state": JobState.FAILED}))
    second = job_record("second", owner=owner)
    assert store.reserve_input(owner, second.task_id, 600, quota=1000)
    store.discard(second)  # a submit that was not accepted gives its bytes back too
    assert client.hlen(key("inputbytes", owner)) == 0


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
