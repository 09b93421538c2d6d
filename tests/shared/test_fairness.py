"""Fair order across API keys on a real Valkey: shares follow weights, FIFO within a key,
no banked credit, and a waiting job's position is exactly the number of jobs popped first."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest
import redis

from shared.fairness import FIFO_LANE, Lane, started_before
from shared.jobs import JobStore, key
from shared.models import JobRecord, JobState
from shared.settings import Settings
from tests.conftest import job_record


@pytest.fixture
def queue() -> str:
    return f"fair-{uuid.uuid4().hex[:8]}"


def submit(store: JobStore, queue: str, owner: str, weight: int = 1) -> JobRecord:
    record = job_record(str(uuid.uuid4()), owner=owner).model_copy(update={"queue": queue})
    store.create(record, weight)
    return record


def owners_of(store: JobStore, queue: str, ids: list[str | None]) -> list[str]:
    return [store.get(task_id).owner for task_id in ids if task_id is not None]


def pop_all(store: JobStore, queue: str) -> list[str]:
    popped = []
    while (task_id := store.pop(queue, "w")) is not None:
        popped.append(task_id)
    return popped


def test_weights_share_the_starts_and_each_key_stays_fifo(store: JobStore, queue: str) -> None:
    heavy = [submit(store, queue, "heavy", weight=3) for _ in range(30)]
    light = [submit(store, queue, "light", weight=1) for _ in range(30)]
    popped = pop_all(store, queue)
    assert len(popped) == 60
    first = Counter(owners_of(store, queue, list(popped[:40])))
    assert first == {"heavy": 30, "light": 10}  # 3:1 while both wait
    assert [i for i in popped if i in {r.task_id for r in heavy}] == [r.task_id for r in heavy]
    assert [i for i in popped if i in {r.task_id for r in light}] == [r.task_id for r in light]


def test_a_late_key_goes_next_and_then_alternates(store: JobStore, queue: str) -> None:
    for _ in range(20):
        submit(store, queue, "flood")
    early = [store.pop(queue, "w") for _ in range(5)]
    assert owners_of(store, queue, early) == ["flood"] * 5
    late = [submit(store, queue, "late") for _ in range(3)]
    following = owners_of(store, queue, [store.pop(queue, "w") for _ in range(6)])
    assert following == ["late", "flood", "late", "flood", "late", "flood"]
    assert store.backlog(queue) == {"flood": 12}
    assert all(store.get(r.task_id).state is JobState.QUEUED for r in late)


def test_a_key_that_was_away_banks_no_credit(store: JobStore, queue: str) -> None:
    submit(store, queue, "away")
    assert store.pop(queue, "w") is not None  # it had its turn, then had nothing waiting
    for _ in range(10):
        submit(store, queue, "busy")
    for _ in range(6):
        store.pop(queue, "w")
    for _ in range(4):
        submit(store, queue, "away")
    # Back after the busy key ran six, it resumes from the last start, not from its old
    # pass: it goes next, ties the busy key's next job (and wins it by name), then they
    # alternate. With banked credit it would have run all four in a row.
    order = owners_of(store, queue, pop_all(store, queue))
    assert order[:6] == ["away", "away", "busy", "away", "busy", "away"]


def test_a_canceled_job_leaves_its_lane_and_an_empty_lane_leaves_the_order(
    store: JobStore, client: redis.Redis, queue: str
) -> None:
    only = submit(store, queue, "solo")
    others = [submit(store, queue, "other") for _ in range(2)]
    assert store.cancel(only.task_id).state is JobState.CANCELED
    assert client.zscore(key("lanes", queue), "solo") is None
    assert pop_all(store, queue) == [r.task_id for r in others]


def test_a_popped_job_is_claimed_and_counted_held_until_it_ends(
    store: JobStore, client: redis.Redis, queue: str
) -> None:
    record = submit(store, queue, "o")
    assert store.pop(queue, "worker-1") == record.task_id
    assert store.claims(queue) == {record.task_id: "worker-1"}
    assert client.zscore(key("held", queue), record.task_id) is not None
    done = record.model_copy(update={"state": JobState.SUCCEEDED, "worker": "worker-1"})
    store.finish(done)
    assert store.claims(queue) == {}
    assert client.zcard(key("held", queue)) == 0
    assert client.zcard(key("running", queue)) == 0


def test_positions_equal_the_jobs_that_pop_first(store: JobStore, queue: str) -> None:
    """Four keys with mixed weights, some jobs already held: every waiting job's reported
    position is exactly one more than the jobs taken before it."""
    rng = random.Random(14)
    weights = {"k1": 1, "k2": 3, "k3": 2, "big": 7}
    records = []
    for _ in range(60):
        owner = rng.choice(list(weights))
        records.append(submit(store, queue, owner, weights[owner]))
    held = [store.pop(queue, "w") for _ in range(5)]  # popped first: they start first
    for _ in range(5):  # more arrivals after some pops, so passes differ from zero
        owner = rng.choice(list(weights))
        records.append(submit(store, queue, owner, weights[owner]))
    held_ids = [i for i in held if i is not None]
    waiting = [r for r in records if r.task_id not in held_ids]
    positions = {r.task_id: store.queue_snapshot(r, 10)[0] for r in records}
    order = held_ids + pop_all(store, queue)
    assert sorted(order) == sorted(r.task_id for r in records)
    assert {task_id: order.index(task_id) + 1 for task_id in order} == positions
    assert len(waiting) == 60


def test_fifo_mode_is_one_lane_in_arrival_order(
    client: redis.Redis, stack_settings: Settings, queue: str
) -> None:
    fifo = JobStore(client, stack_settings.job_ttl_s, fair=False)
    records = [submit(fifo, queue, owner) for owner in ["a"] * 5 + ["b"] * 2]
    assert fifo.backlog(queue) == {FIFO_LANE: 7}
    assert pop_all(fifo, queue) == [r.task_id for r in records]


def test_started_before_breaks_equal_tags_by_owner() -> None:
    lanes = [Lane(b"a", 0, 10, 3), Lane(b"b", 0, 10, 3)]
    assert started_before(lanes, b"a", 0) == 0
    assert started_before(lanes, b"b", 0) == 1  # a's head ties and sorts first
    assert started_before(lanes, b"b", 2) == 5
    assert started_before(lanes, b"a", 2) == 4


def test_pruning_forgets_only_state_that_cannot_matter(
    store: JobStore, client: redis.Redis, queue: str
) -> None:
    submit(store, queue, "gone", weight=2)
    store.pop(queue, "w")  # its lane empties: it resumes from one stride past this start
    for _ in range(3):
        submit(store, queue, "busy")
    state = key("lanestate", queue)
    assert store.prune_lanes(queue) == 0  # "gone" resumes ahead of the last start: kept
    assert client.hexists(state, "saved:gone")
    store.pop(queue, "w")
    store.pop(queue, "w")  # the last start has passed where "gone" would resume
    assert store.prune_lanes(queue) == 1
    assert not client.hexists(state, "saved:gone") and not client.hexists(state, "stride:gone")
    assert client.hexists(state, "stride:busy")  # a waiting lane keeps its own
    late = submit(store, queue, "gone")
    assert owners_of(store, queue, [store.pop(queue, "w")]) == ["gone"]  # as if never away
    assert store.get(late.task_id).owner == "gone"
