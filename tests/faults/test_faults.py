"""No lost job: real workers killed and stopped, Redis restarted, S3 stopped, mid-run.

After each fault every accepted job must reach exactly one terminal state within the
stated bound, each success must have exactly its outputs in S3, and the counts are printed
(``make faults`` shows them; test-artifacts/faults.json keeps them).
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from shared.jobs import connect_redis
from shared.keys import KeyStore
from shared.models import InferenceType
from tests.conftest import API_KEY, data_uri, png_bytes
from tests.faults.conftest import FaultStack, settle, stop_group

pytestmark = pytest.mark.faults

BOUND_S = 180  # every accepted job ends within this, fault included
IMAGE = data_uri(png_bytes(512, 512))


def submit_many(
    stack: FaultStack, count: int, gpu: str = "a10g", api_key: str = API_KEY
) -> list[str]:
    """Accepted task ids; a 503 (nothing accepted) is retried, as a client would."""
    ids: list[str] = []
    body = {
        "app_id": "tiny-sd", "image": IMAGE, "celery": True, "strength": 1.0,
        "inference_type": gpu,
    }  # fmt: skip
    with httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as client:
        while len(ids) < count:
            try:
                answer = client.post("/getImageToImage", json=body)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if answer.status_code == 200:
                ids.append(answer.json()["task_id"])
            else:
                assert answer.status_code == 503, answer.text  # nothing else is acceptable
                time.sleep(0.2)
    return ids


def kill_9_and_replace(stack: FaultStack, group: int) -> None:
    """SIGKILL a worker's whole process group (easel worker and its Celery worker), as a
    lost machine would, and start a fresh worker in its place."""
    killed = next(w for w in stack.workers if w.pid == group)
    stop_group(killed, signal.SIGKILL)
    stack.workers.remove(killed)
    stack.start_worker()


def test_kill_9_a_worker_mid_job_then_restart_it(fault_stack: FaultStack) -> None:
    task_ids = submit_many(fault_stack, 50)
    victim, group = fault_stack.worker_running(fault_stack.jobs(), task_ids)
    kill_9_and_replace(fault_stack, group)
    tally = settle(fault_stack, "kill-9-worker", task_ids, BOUND_S)
    assert (tally.lost, tally.duplicated, tally.failed) == (0, 0, 0), tally
    assert fault_stack.jobs().get(victim.task_id).attempts >= 2  # it really ran again
    fault_stack.wait_live_workers(2)


def test_kill_9_a_worker_mid_batch_redelivers_every_member(fault_stack: FaultStack) -> None:
    """tiny-sd batches up to 4 images a call: a worker killed mid-call had every member
    running (and more held); each one must run again elsewhere, none lost, none twice."""
    task_ids = submit_many(fault_stack, 40)
    members, group = fault_stack.worker_batching(fault_stack.jobs(), task_ids)
    kill_9_and_replace(fault_stack, group)
    tally = settle(fault_stack, "kill-9-worker-mid-batch", task_ids, BOUND_S)
    assert (tally.lost, tally.duplicated, tally.failed) == (0, 0, 0), tally
    again = [fault_stack.jobs().get(m.task_id) for m in members]
    assert all(r.attempts >= 2 and r.worker != members[0].worker for r in again), again
    fault_stack.wait_live_workers(2)


def test_kill_9_the_worker_dispatching_mid_flood(fault_stack: FaultStack) -> None:
    """Which job runs next is decided inside the workers: each turn pops the fairest job
    (shared/fairness.py), so the dispatching is done by whichever worker pops. Kill one
    while a key floods and another key's jobs are popped, held and run among the flood's:
    every job of both keys still ends exactly once."""
    settings = fault_stack.settings
    keys = KeyStore(connect_redis(settings), settings)
    flood_key, _ = keys.create("fault-flood", "100000/minute", 500)
    other_key, _ = keys.create("fault-other", "100000/minute", 500)
    flood: list[str] = []
    flooding = threading.Thread(
        target=lambda: flood.extend(submit_many(fault_stack, 40, api_key=flood_key))
    )
    flooding.start()
    others = submit_many(fault_stack, 10, api_key=other_key)
    _, group = fault_stack.worker_running(fault_stack.jobs(), others)
    kill_9_and_replace(fault_stack, group)
    flooding.join()
    tally = settle(fault_stack, "kill-9-worker-mid-flood", flood + others, BOUND_S)
    assert (tally.lost, tally.duplicated, tally.failed) == (0, 0, 0), tally
    jobs = fault_stack.jobs()
    assert jobs.claims(settings.queue_for(InferenceType.A10G)) == {}  # no claim left behind
    fault_stack.wait_live_workers(2)


def test_sigterm_a_worker_mid_job_finishes_that_job(fault_stack: FaultStack) -> None:
    task_ids = submit_many(fault_stack, 12)
    victim, group = fault_stack.worker_running(fault_stack.jobs(), task_ids)
    stopped = next(w for w in fault_stack.workers if w.pid == group)
    stopped.send_signal(signal.SIGTERM)  # to the main process only, as Kubernetes does
    stopped.wait(timeout=120)  # Celery's warm shutdown: it finishes the job first
    stop_group(stopped)
    fault_stack.workers.remove(stopped)
    fault_stack.start_worker()
    tally = settle(fault_stack, "sigterm-worker", task_ids, BOUND_S)
    assert (tally.lost, tally.duplicated, tally.failed) == (0, 0, 0), tally
    record = fault_stack.jobs().get(victim.task_id)
    assert record.status.value == "SUCCESS" and record.attempts == 1  # finished, not redone
    fault_stack.wait_live_workers(2)


def test_restart_redis_mid_run(fault_stack: FaultStack) -> None:
    task_ids = submit_many(fault_stack, 20)
    fault_stack.worker_running(fault_stack.jobs(), task_ids)
    # Down long enough for several of Celery's reconnect attempts to fail first.
    fault_stack.restart_redis(down_s=8.0)
    tally = settle(fault_stack, "restart-redis", task_ids, BOUND_S)
    assert (tally.lost, tally.duplicated) == (0, 0), tally
    assert tally.failed == 0, tally.errors
    fault_stack.wait_live_workers(2)
    fault_stack.wait_live_workers(1, gpu="a100")
    # Each worker still consumes only its own queue after reconnecting.
    by_class = {gpu: submit_many(fault_stack, 3, gpu) for gpu in ("a10g", "a100")}
    every = [task_id for ids in by_class.values() for task_id in ids]
    after = settle(fault_stack, "after-redis", every, BOUND_S)
    assert (after.lost, after.failed) == (0, 0), after
    jobs = fault_stack.jobs()
    for gpu, ids in by_class.items():
        ran_on = {jobs.get(task_id).worker for task_id in ids}
        assert all(w and w.startswith(f"{gpu}-") for w in ran_on), (gpu, ran_on)


def test_stop_s3_for_10_seconds_mid_run(fault_stack: FaultStack) -> None:
    task_ids = submit_many(fault_stack, 20)
    fault_stack.worker_running(fault_stack.jobs(), task_ids)
    fault_stack.stop_s3()
    outage = threading.Timer(10, fault_stack.start_s3)
    outage.start()
    more = submit_many(fault_stack, 5)  # the API still accepts: S3 is the workers' concern
    outage.join()
    tally = settle(fault_stack, "stop-s3-10s", task_ids + more, BOUND_S)
    assert (tally.lost, tally.duplicated, tally.failed) == (0, 0, 0), tally.errors
