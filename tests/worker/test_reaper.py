"""Orphaned jobs on real Redis: the reaper requeues or fails them, and a redelivery never
runs a job that a live worker still holds."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from shared.jobs import JobStore, WorkerLiveness, connect_redis, key
from shared.models import JobRecord, JobState
from shared.queues import GENERATE_TASK
from shared.settings import Settings
from tests.conftest import job_record
from worker.reaper import HANDS_MARGIN_S, UNPUBLISHED_GRACE_S, Reaper

QUEUE = "reapertest.a10g"


class Sent(list[tuple[str, dict[str, Any]]]):
    def __call__(self, name: str, **options: Any) -> None:
        self.append((name, options))


@pytest.fixture
def settings(stack_settings: Settings) -> Settings:
    return stack_settings.model_copy(
        update={"queues": {**stack_settings.queues, "a10g": QUEUE}, "max_attempts": 2}
    )


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    return JobStore(connect_redis(settings), settings.job_ttl_s)


@pytest.fixture(autouse=True)
def fresh_queue(jobs: JobStore) -> None:
    """Each test starts from an empty queue: no earlier test's jobs for its sweeps."""
    kinds = ("lanes", "lanestate", "claims", "held", "running", "queued", "unpublished")
    names = [key(kind, QUEUE) for kind in (*kinds, "workers", "hands")]
    jobs.redis.delete(*names, *jobs.redis.keys(key("lane", f"{QUEUE}:*")))


def running_job(jobs: JobStore, worker: str, attempts: int = 1, age_s: float = 60) -> JobRecord:
    record = job_record(str(uuid.uuid4()))
    record.queue = QUEUE
    jobs.create(record)

    def start(r: JobRecord) -> bool:
        r.state, r.worker, r.attempts = JobState.RUNNING, worker, attempts
        r.started_at = time.time() - age_s
        return True

    taken = jobs.start(record.task_id, start)
    assert taken is not None and record.task_id in jobs.taken_at(QUEUE)
    return taken


def test_a_job_whose_worker_died_is_queued_again(jobs: JobStore, settings: Settings) -> None:
    job = running_job(jobs, "dead-worker/1")
    sent = Sent()
    assert Reaper(jobs, settings, sent).sweep() == [job.task_id]
    record = jobs.get(job.task_id)
    assert record.state is JobState.QUEUED and record.worker is None
    assert job.task_id not in jobs.taken_at(QUEUE)
    position, _, _ = jobs.queue_snapshot(record, settings.worker_stale_after_s)
    assert position is not None  # counted among the waiting again
    assert sent == [(GENERATE_TASK, {"queue": QUEUE})]  # a turn: it names no job, no limit
    assert popped_next(jobs) == job.task_id  # first in its lane again


def popped_next(jobs: JobStore) -> str | None:
    """The next job a turn pops, claim dropped again so that no later sweep sees it."""
    task_id = jobs.pop(QUEUE, "next-worker")
    if task_id is not None:
        jobs.unclaim(QUEUE, task_id, ended=True)
    return task_id


def held_job(jobs: JobStore, worker: str) -> JobRecord:
    """A job a worker took off the queue and holds until its GPU thread admits it."""
    record = job_record(str(uuid.uuid4()))
    record.queue = QUEUE
    jobs.create(record)

    def hold(r: JobRecord) -> bool:
        r.worker = worker
        return True

    taken = jobs.start(record.task_id, hold)
    assert taken is not None and taken.state is JobState.QUEUED
    return taken


def test_a_held_job_keeps_its_queue_place_and_goes_back_when_its_worker_dies(
    jobs: JobStore, settings: Settings
) -> None:
    job = held_job(jobs, "dead-holder/1")
    assert job.task_id in jobs.taken_at(QUEUE)  # watched by the reaper
    position, _, _ = jobs.queue_snapshot(job, settings.worker_stale_after_s)
    assert position is not None  # still waiting, so still counted among the waiting
    sent = Sent()
    assert Reaper(jobs, settings, sent).sweep() == [job.task_id]
    record = jobs.get(job.task_id)
    assert (record.state, record.worker, record.attempts) == (JobState.QUEUED, None, 0)
    assert job.task_id not in jobs.taken_at(QUEUE)
    assert sent == [(GENERATE_TASK, {"queue": QUEUE})]
    assert popped_next(jobs) == job.task_id


def test_a_held_job_of_a_live_worker_is_left_alone(jobs: JobStore, settings: Settings) -> None:
    job = held_job(jobs, "live-holder/1")
    WorkerLiveness(jobs.redis, settings.worker_stale_after_s).beat(QUEUE, "live-holder/1")
    sent = Sent()
    assert Reaper(jobs, settings, sent).sweep() == []
    assert jobs.get(job.task_id).worker == "live-holder/1" and sent == []
    job.state = JobState.CANCELED
    jobs.finish(job)  # leave no held job for a later sweep, once the beat goes stale


def test_admission_skips_a_job_canceled_while_held(jobs: JobStore) -> None:
    kept, canceled = held_job(jobs, "w/1"), held_job(jobs, "w/1")
    jobs.cancel(canceled.task_id)
    admitted = jobs.admit([kept, canceled], lambda r: setattr(r, "state", JobState.RUNNING))
    assert [r.task_id for r in admitted] == [kept.task_id]
    assert jobs.get(kept.task_id).state is JobState.RUNNING
    assert jobs.get(canceled.task_id).state is JobState.CANCELED
    assert kept.task_id in jobs.taken_at(QUEUE) and canceled.task_id not in jobs.taken_at(QUEUE)
    kept.state = JobState.SUCCEEDED
    jobs.finish(kept)  # leave no running job for the next test's sweep


def test_a_job_that_lost_its_workers_too_often_fails(jobs: JobStore, settings: Settings) -> None:
    job = running_job(jobs, "dead-worker/2", attempts=2)
    sent = Sent()
    Reaper(jobs, settings, sent).sweep()
    record = jobs.get(job.task_id)
    assert record.state is JobState.FAILED
    assert record.error == "worker lost 2 times while running this job"
    assert sent == []


def test_live_workers_and_fresh_starts_are_left_alone(jobs: JobStore, settings: Settings) -> None:
    WorkerLiveness(jobs.redis, settings.worker_stale_after_s).beat(QUEUE, "live-worker/3")
    on_live = running_job(jobs, "live-worker/3")
    just_started = running_job(jobs, "dead-worker/4", age_s=0)
    sent = Sent()
    assert Reaper(jobs, settings, sent).sweep() == []
    assert jobs.get(on_live.task_id).state is JobState.RUNNING
    assert jobs.get(just_started.task_id).state is JobState.RUNNING
    assert sent == []


def test_only_one_process_sweeps_per_interval(jobs: JobStore, settings: Settings) -> None:
    running_job(jobs, "dead-worker/5")
    first, second = Reaper(jobs, settings, Sent()), Reaper(jobs, settings, Sent())
    jobs.redis.delete(f"easel:reaper:{QUEUE}")
    assert first.maybe_sweep()
    assert second.maybe_sweep() == []  # the lock is held for the interval


def recorded_job(jobs: JobStore, age_s: float) -> JobRecord:
    """A job the API recorded ``age_s`` ago and never confirmed on the broker."""
    record = job_record(str(uuid.uuid4()), owner=f"owner-{uuid.uuid4().hex[:6]}")
    record.queue, record.created_at = QUEUE, time.time() - age_s
    jobs.create(record, weight=1)
    jobs.redis.zadd(key("inflight", record.owner), {record.task_id: record.created_at})
    return record


def test_a_job_recorded_but_never_published_ends_failed(jobs: JobStore, settings: Settings) -> None:
    lost = recorded_job(jobs, age_s=UNPUBLISHED_GRACE_S + 30)
    confirmed = recorded_job(jobs, age_s=UNPUBLISHED_GRACE_S + 30)
    jobs.published(confirmed)
    young = recorded_job(jobs, age_s=1)
    sent = Sent()
    assert Reaper(jobs, settings, sent).sweep() == [lost.task_id]
    record = jobs.get(lost.task_id)
    assert record.state is JobState.FAILED and record.error is not None
    assert record.error.startswith("never queued")
    assert jobs.redis.zscore(key("inflight", lost.owner), lost.task_id) is None  # slot freed
    assert jobs.redis.get(key("done", lost.task_id)) == b"1"  # ended once, waiters woken
    pending = jobs.unpublished(QUEUE, time.time())
    assert young.task_id in pending and lost.task_id not in pending
    assert jobs.get(confirmed.task_id).state is JobState.QUEUED and sent == []


def test_an_unconfirmed_job_a_worker_took_after_all_is_left_to_run(
    jobs: JobStore, settings: Settings
) -> None:
    taken = recorded_job(jobs, age_s=UNPUBLISHED_GRACE_S + 30)

    def start(r: JobRecord) -> bool:
        r.state, r.worker, r.attempts, r.started_at = JobState.RUNNING, "w", 1, time.time()
        return True

    jobs.start(taken.task_id, start)
    WorkerLiveness(jobs.redis, settings.worker_stale_after_s).beat(QUEUE, "w")
    assert Reaper(jobs, settings, Sent()).sweep() == []
    assert jobs.get(taken.task_id).state is JobState.RUNNING
    assert taken.task_id not in jobs.unpublished(QUEUE, time.time())


def claimed_job(jobs: JobStore, worker: str) -> JobRecord:
    """A job a worker popped in its turn and has not taken yet."""
    owner = f"claims-{uuid.uuid4().hex[:6]}"
    record = job_record(str(uuid.uuid4()), owner=owner)
    record.queue = QUEUE
    jobs.create(record, weight=1)
    assert jobs.pop(QUEUE, worker) == record.task_id
    return record


def test_a_claim_whose_worker_died_goes_back_to_the_head_of_its_lane(
    jobs: JobStore, settings: Settings
) -> None:
    claimed = claimed_job(jobs, "dead-popper/1")
    later = job_record(str(uuid.uuid4()), owner=claimed.owner)
    later.queue = QUEUE
    jobs.create(later, weight=1)
    sent = Sent()
    assert Reaper(jobs, settings, sent).sweep() == [claimed.task_id]
    assert jobs.claims(QUEUE).get(claimed.task_id) is None
    assert claimed.task_id not in jobs.taken_at(QUEUE)
    assert sent == [(GENERATE_TASK, {"queue": QUEUE})]
    assert jobs.backlog(QUEUE)[claimed.owner] == 2
    position, _, _ = jobs.queue_snapshot(claimed, settings.worker_stale_after_s)
    later_position, _, _ = jobs.queue_snapshot(later, settings.worker_stale_after_s)
    assert position is not None and later_position is not None and later_position > position
    lane = key("lane", f"{QUEUE}:{claimed.owner}")
    assert jobs.redis.lrange(lane, 0, -1) == [claimed.task_id.encode(), later.task_id.encode()]


def test_a_claim_of_a_live_worker_is_left_alone(jobs: JobStore, settings: Settings) -> None:
    WorkerLiveness(jobs.redis, settings.worker_stale_after_s).beat(QUEUE, "live-popper/1")
    claimed = claimed_job(jobs, "live-popper/1")
    assert Reaper(jobs, settings, Sent()).sweep() == []
    assert jobs.claims(QUEUE)[claimed.task_id] == "live-popper/1"
    jobs.unclaim(QUEUE, claimed.task_id, ended=True)


@pytest.fixture
def lonely(settings: Settings) -> Settings:
    """Settings for a queue of this test alone, so that its turns are countable."""
    return settings.model_copy(
        update={"queues": {**settings.queues, "a10g": f"reconcile-{uuid.uuid4().hex[:8]}"}}
    )


def test_jobs_without_turns_get_them_after_two_sweeps(jobs: JobStore, lonely: Settings) -> None:
    queue = lonely.queue_for(lonely.worker_gpu)
    for _ in range(3):
        record = job_record(str(uuid.uuid4()))
        record.queue = queue
        jobs.create(record, weight=1)
    jobs.redis.rpush(queue, b"a-turn")  # Celery's list holds one turn: two are missing
    reaper, sent = Reaper(jobs, lonely, Sent()), Sent()
    reaper.send_task = sent
    assert reaper.reconcile() == 0  # once could be a turn in flight from list to worker
    assert reaper.reconcile() == 2
    assert sent == [(GENERATE_TASK, {"queue": queue})] * 2
    jobs.redis.delete(queue)


def test_turns_a_live_worker_waits_with_count_and_no_job_waiting_needs_none(
    jobs: JobStore, lonely: Settings
) -> None:
    queue = lonely.queue_for(lonely.worker_gpu)
    record = job_record(str(uuid.uuid4()))
    record.queue = queue
    jobs.create(record, weight=1)
    liveness = WorkerLiveness(jobs.redis, lonely.worker_stale_after_s)
    liveness.beat(queue, "warming/1", [], turns=1)  # it has the turn; warming up
    reaper, sent = Reaper(jobs, lonely, Sent()), Sent()
    reaper.send_task = sent
    assert [reaper.reconcile(), reaper.reconcile()] == [0, 0]
    jobs.redis.zrem(key("workers", queue), "warming/1")  # it died with that turn
    assert [reaper.reconcile(), reaper.reconcile()] == [0, 1]
    assert jobs.pop(queue, "w") == record.task_id
    assert [reaper.reconcile(), reaper.reconcile()] == [0, 0]  # nothing waits any more
    assert sent == [(GENERATE_TASK, {"queue": queue})]


def say_hands(jobs: JobStore, settings: Settings, worker: str, in_hand: list[str]) -> None:
    """A heartbeat of ``worker`` listing what it has, a little after it took its jobs."""
    time.sleep(HANDS_MARGIN_S + 0.1)
    WorkerLiveness(jobs.redis, settings.worker_stale_after_s).beat(QUEUE, worker, in_hand)


def test_a_live_worker_that_no_longer_has_its_job_loses_it(
    jobs: JobStore, settings: Settings
) -> None:
    """A failover lost the final write: the record still says running on a live worker,
    which has finished with it. Its heartbeat does not list it, so it runs again."""
    kept = running_job(jobs, "live-forgetful/1", age_s=0)
    lost = running_job(jobs, "live-forgetful/1", age_s=0)
    held = held_job(jobs, "live-forgetful/1")
    say_hands(jobs, settings, "live-forgetful/1", [kept.task_id])
    sent = Sent()
    assert sorted(Reaper(jobs, settings, sent).sweep()) == sorted([lost.task_id, held.task_id])
    assert jobs.get(kept.task_id).state is JobState.RUNNING
    again = jobs.get(lost.task_id)
    assert (again.state, again.worker, again.attempts) == (JobState.QUEUED, None, 1)
    assert jobs.get(held.task_id).worker is None
    assert sent == [(GENERATE_TASK, {"queue": QUEUE})] * 2
    assert sorted(jobs.backlog(QUEUE).values()) == [2]  # both back in their key's lane
    kept.state = JobState.SUCCEEDED
    jobs.finish(kept)


def test_a_job_taken_just_before_the_heartbeat_is_trusted(
    jobs: JobStore, settings: Settings
) -> None:
    WorkerLiveness(jobs.redis, settings.worker_stale_after_s).beat(QUEUE, "live-busy/1", [])
    fresh = running_job(jobs, "live-busy/1", age_s=0)  # after the heartbeat: not listed yet
    assert Reaper(jobs, settings, Sent()).sweep() == []
    assert jobs.get(fresh.task_id).state is JobState.RUNNING


def test_a_claim_its_live_worker_forgot_goes_back(jobs: JobStore, settings: Settings) -> None:
    claimed = claimed_job(jobs, "live-dropper/1")
    say_hands(jobs, settings, "live-dropper/1", [])
    assert Reaper(jobs, settings, Sent()).sweep() == [claimed.task_id]
    assert jobs.backlog(QUEUE) == {claimed.owner: 1}


def test_a_waiting_job_in_no_lane_goes_back_with_a_turn(jobs: JobStore, settings: Settings) -> None:
    record = job_record(str(uuid.uuid4()))
    record.queue = QUEUE
    jobs.create(record, weight=1)
    jobs.redis.delete(key("lane", f"{QUEUE}:{record.owner}"))  # as a failover may lose it
    sent = Sent()
    assert Reaper(jobs, settings, sent).sweep() == [record.task_id]
    assert sent == [(GENERATE_TASK, {"queue": QUEUE})]
    assert jobs.pop(QUEUE, "w") == record.task_id
