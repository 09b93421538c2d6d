"""The batcher's grouping, waiting and splitting, with a recording stand-in for the GPU call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from PIL import Image

from shared.models import JobRecord
from shared.registry import ModelSpec, load_registry
from tests.conftest import job_record
from worker.batcher import Batcher, Member, NobodyLeft, batch_key, start_step
from worker.pipelines import BatchItem, is_out_of_memory

TINY = load_registry().get("tiny-sd")


def spec(max_batch: int = 4, max_wait_ms: float = 50.0) -> ModelSpec:
    return TINY.model_copy(update={"max_batch": max_batch, "max_wait_ms": max_wait_ms})


def member(model: ModelSpec, images: int = 1, size: int = 64, **params: object) -> Member:
    record: JobRecord = job_record(f"job-{time.monotonic_ns()}", batch=images)
    record.params = record.params.model_copy(update=params)
    item = BatchItem(record.params, Image.new("RGB", (size, size)), list(range(images)))
    return Member(record, model, item, deadline=time.monotonic() + 60)


class Recorder:
    """Stands in for worker/calls.py's execute: records each group, gives each image back."""

    def __init__(self, fail: Callable[[list[Member]], Exception | None] = lambda g: None):
        self.groups: list[list[Member]] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, group: list[Member]) -> None:
        self.gate.wait()
        self.groups.append(group)
        error = self.fail(group)
        if error is not None:
            raise error
        for m in group:
            m.images = [Image.new("RGB", (8, 8))] * m.size
            m.call_images = sum(x.size for x in group)


def run_all(
    batcher: Batcher, members: list[Member], busy: Recorder | None = None
) -> dict[Member, BaseException | None]:
    """Each member on its own thread, as Celery's threads pool runs jobs; every one counts
    as arriving (fetching its input) from the start until it reaches the batcher. With
    ``busy``, the GPU runs another job meanwhile, so they all wait together, as on a
    loaded queue (that call is left out of ``busy.groups``)."""
    outcome: dict[Member, BaseException | None] = {}
    if busy is not None:
        busy.gate.clear()
        other = member(members[0].spec.model_copy(update={"max_wait_ms": 0}), size=32)
        threading.Thread(target=batcher.run, args=(other,)).start()
        time.sleep(0.05)  # it is in its call, held at the gate
        threading.Timer(0.2, busy.gate.set).start()
    marks = [batcher.arriving() for _ in members]
    for mark in marks:
        mark.__enter__()

    def one(m: Member, mark: AbstractContextManager[None]) -> None:
        mark.__exit__(None, None, None)
        try:
            batcher.run(m)
            outcome[m] = None
        except Exception as exc:  # noqa: BLE001 - the test reads which job got which error
            outcome[m] = exc

    threads = [threading.Thread(target=one, args=pair) for pair in zip(members, marks, strict=True)]
    for thread in threads:
        thread.start()
        time.sleep(0.002)  # arrival order is submission order
    for thread in threads:
        thread.join(timeout=10)
    if busy is not None:
        del busy.groups[0]
    return outcome


def test_compatible_jobs_share_one_call_up_to_max_batch() -> None:
    recorder = Recorder()
    recorder.gate.clear()  # the GPU is busy: jobs pile up, as on a loaded queue
    batcher = Batcher(recorder, is_out_of_memory)
    model = spec(max_batch=4)
    first = member(model)
    waiting = threading.Thread(target=batcher.run, args=(first,))
    waiting.start()
    time.sleep(0.1)  # the first call has started and waits on the gate
    rest = [member(model) for _ in range(6)]
    release = threading.Timer(0.2, recorder.gate.set)
    release.start()
    outcome = run_all(batcher, rest)
    waiting.join()
    assert all(error is None for error in outcome.values())
    assert [len(g) for g in recorder.groups] == [1, 4, 2]
    assert [m.call_images for m in rest] == [4, 4, 4, 4, 2, 2]


def test_a_jobs_own_batch_counts_and_is_never_split() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, is_out_of_memory)
    model = spec(max_batch=4, max_wait_ms=100)
    big, small, other = member(model, images=3), member(model, images=2), member(model, 1)
    run_all(batcher, [big, small, other], busy=recorder)
    sizes = [[m.size for m in g] for g in recorder.groups]
    assert sizes == [[3, 1], [2]]  # 3 + 2 > 4: the 2 waits; the 1 fills the first call


def test_a_batch_larger_than_max_batch_still_runs_whole() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, is_out_of_memory)
    alone = member(spec(max_batch=1), images=4)
    batcher.run(alone)
    assert [len(g) for g in recorder.groups] == [1] and alone.call_images == 4


def test_incompatible_jobs_never_share_a_call() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, is_out_of_memory)
    model = spec(max_batch=8, max_wait_ms=100)
    members = [
        member(model),
        member(model, guidance_scale=3.0),
        member(model, size=128),
        member(model, negative_prompt="blurry"),
        member(model),
    ]
    run_all(batcher, members)
    keys = [{m.key for m in g} for g in recorder.groups]
    assert all(len(k) == 1 for k in keys)  # every call is one key
    assert sorted(len(g) for g in recorder.groups) == [1, 1, 1, 2]


def test_strengths_that_start_at_the_same_step_are_compatible() -> None:
    steps = TINY.default_steps  # 10
    assert start_step(steps, 0.75) == start_step(steps, 0.79) == 3
    same = batch_key(TINY, member(TINY, strength=0.75).record.params, (64, 64))
    assert same == batch_key(TINY, member(TINY, strength=0.79).record.params, (64, 64))
    assert same != batch_key(TINY, member(TINY, strength=0.8).record.params, (64, 64))


def test_a_lone_job_waits_at_most_max_wait_ms_for_a_partner_on_its_way() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, is_out_of_memory)
    lone = member(spec(max_batch=4, max_wait_ms=150))
    started = time.monotonic()
    with batcher.arriving():  # a partner is fetching, and never comes
        batcher.run(lone)
    waited = time.monotonic() - started
    assert 0.14 <= waited < 2.0, waited
    no_wait = member(spec(max_batch=4, max_wait_ms=0))
    started = time.monotonic()
    with batcher.arriving():
        batcher.run(no_wait)
    assert time.monotonic() - started < 0.14


def test_two_jobs_go_at_once_without_waiting_to_fill_the_call() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, is_out_of_memory)
    model = spec(max_batch=8, max_wait_ms=1000)
    pair = [member(model), member(model)]
    started = time.monotonic()
    with batcher.arriving():  # more on their way, but a pair already shares the call
        outcome = run_all(batcher, pair, busy=recorder)
    assert all(error is None for error in outcome.values())
    assert [len(g) for g in recorder.groups] == [2]
    assert time.monotonic() - started < 0.9  # not the 1 s max_wait_ms


def test_a_lone_job_with_no_partner_on_its_way_runs_at_once() -> None:
    batcher = Batcher(Recorder(), is_out_of_memory)
    started = time.monotonic()
    batcher.run(member(spec(max_batch=4, max_wait_ms=1000)))
    assert time.monotonic() - started < 0.5  # not the 1 s max_wait_ms


def test_a_failed_call_reruns_each_member_alone_so_partners_succeed() -> None:
    model = spec(max_batch=4, max_wait_ms=100)
    bad = member(model, prompt="poison")
    recorder = Recorder(lambda g: ValueError("bad input") if bad in g else None)
    batcher = Batcher(recorder, is_out_of_memory)
    good = [member(model), member(model)]
    outcome = run_all(batcher, [good[0], bad, good[1]], busy=recorder)
    assert isinstance(outcome[bad], ValueError)
    assert outcome[good[0]] is None and outcome[good[1]] is None
    assert [len(g) for g in recorder.groups] == [3, 1, 1, 1]


def test_out_of_memory_retries_in_halves_down_to_what_fits() -> None:
    model = spec(max_batch=4, max_wait_ms=100)
    recovered: list[int] = []

    def oom(group: list[Member]) -> Exception | None:
        too_big = sum(m.size for m in group) > 1
        return RuntimeError("CUDA out of memory. Tried to allocate") if too_big else None

    recorder = Recorder(oom)
    batcher = Batcher(recorder, is_out_of_memory, recover=lambda: recovered.append(1))
    members = [member(model) for _ in range(4)]
    outcome = run_all(batcher, members, busy=recorder)
    assert all(error is None for error in outcome.values())
    assert [len(g) for g in recorder.groups] == [4, 2, 1, 1, 2, 1, 1]
    assert len(recovered) == 3  # after each OOM that split a group


def test_members_ended_early_are_not_touched_and_nobody_left_stops_the_call() -> None:
    model = spec(max_batch=2, max_wait_ms=100)
    canceled = member(model)

    def execute(group: list[Member]) -> None:
        for m in group:
            m.end(RuntimeError("canceled"))  # as the step callback ends them
        raise NobodyLeft

    batcher = Batcher(execute, is_out_of_memory)
    with pytest.raises(RuntimeError, match="canceled"):
        batcher.run(canceled)


def test_a_broken_runner_ends_its_jobs_and_the_gpu_thread_lives_on() -> None:
    calls: list[int] = []

    def execute(group: list[Member]) -> None:
        calls.append(len(group))
        if len(calls) == 1:
            raise SystemExit("not an Exception")  # caught by the loop, not by _run

    batcher = Batcher(execute, is_out_of_memory)
    with pytest.raises(SystemExit):
        batcher.run(member(spec(max_wait_ms=0)))
    batcher.run(member(spec(max_wait_ms=0)))  # the next job still runs
    assert calls == [1, 1]


def test_a_call_past_every_members_limit_reads_as_stuck() -> None:
    gate = threading.Event()
    batcher = Batcher(lambda group: gate.wait(), is_out_of_memory)
    late = member(spec(max_wait_ms=0))
    late.deadline = time.monotonic() - 61  # past its limit and the 60 s grace
    runner = threading.Thread(target=batcher.run, args=(late,))
    runner.start()
    time.sleep(0.1)
    assert batcher.stuck_for() > 0
    gate.set()
    runner.join(timeout=5)
    assert batcher.stuck_for() == 0.0
