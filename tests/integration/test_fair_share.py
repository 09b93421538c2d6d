"""Fair share on the real stack: keys made with `easel keys create --weight`, jobs through the
API, one real worker process running tiny-sd; the order jobs start in is read back from
their records.

Key A submits its whole flood first, then key B (weight 3) submits as many. With FIFO, B's
jobs would all start after A's. Then one worker, one job at a time, starts them, and:
- B gets 6 of the first 8 starts: 3 for every 1 of A's, though A came first;
- within each key, jobs start in the order they were submitted;
- each job's queue_position, read before the worker started, is exactly one more than the
  number of jobs that started before it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api import create_app
from easel.dev import stop
from easel.stack import wait_until
from shared.jobs import JobStore, connect_redis
from shared.keys import KeyStore
from shared.models import JobRecord
from tests.conftest import data_uri, png_bytes, settings_from, spawn

pytestmark = pytest.mark.integration

FLOOD = 8


@pytest.fixture
def queue() -> str:
    return f"fairtest-{uuid.uuid4().hex[:8]}.a10g"


@pytest.fixture
def env(stack_env: dict[str, str], queue: str) -> dict[str, str]:
    """The stack, with a10g jobs on a queue of this test alone."""
    queues = {"a10g": queue, "a100": f"{queue}-unused-a100", "h100": f"{queue}-unused-h100"}
    return {**stack_env, "EASEL_QUEUES": json.dumps(queues)}


@pytest.fixture
def api(env: dict[str, str]) -> FlaskClient:
    settings = settings_from(env, queues=env["EASEL_QUEUES"], require_live_worker="false")
    return create_app(settings).test_client()


def submit(api: FlaskClient, api_key: str) -> str:
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True,
            "inference_type": "a10g"}  # fmt: skip
    answer = api.post("/getImageToImage", json=body, headers={"Authorization": f"Bearer {api_key}"})
    assert answer.status_code == 200, answer.json
    return str(answer.json["task_id"])


def test_weighted_fair_order_fifo_within_keys_and_truthful_positions(
    api: FlaskClient, env: dict[str, str], queue: str, logs_dir: Path
) -> None:
    settings = settings_from(env, queues=env["EASEL_QUEUES"])
    keys = KeyStore(connect_redis(settings), settings)
    key_a, record_a = keys.create("flood-a", "100000/minute", 100, weight=1)
    key_b, record_b = keys.create("late-b", "100000/minute", 100, weight=3)
    a_jobs = [submit(api, key_a) for _ in range(FLOOD)]
    b_jobs = [submit(api, key_b) for _ in range(FLOOD)]
    positions = {}
    for task_id, api_key in [(t, key_a) for t in a_jobs] + [(t, key_b) for t in b_jobs]:
        answer = api.get(f"/tasks/{task_id}", headers={"Authorization": f"Bearer {api_key}"})
        positions[task_id] = answer.json["queue_position"]

    # One worker, one job at a time: its start order is the order turns popped the jobs.
    worker = spawn(["worker", "--gpu", "a10g", "--concurrency", "1"], env,
                   logs_dir / f"worker-{queue}.log")  # fmt: skip
    jobs = JobStore(connect_redis(settings), settings.job_ttl_s)
    try:

        def all_done() -> None:
            assert worker.poll() is None, "the worker exited; see its log"
            states = [jobs.get(t).state.value for t in a_jobs + b_jobs]
            assert all(s == "succeeded" for s in states), states

        wait_until(all_done, 240, "every job of the test")
    finally:
        stop(worker)
    records: list[JobRecord] = sorted(
        (jobs.get(t) for t in a_jobs + b_jobs), key=lambda r: r.started_at or 0
    )
    order = [r.task_id for r in records]
    owners = [r.owner for r in records]
    assert owners[:8].count(record_b.owner) == 6  # 3:1 from the start, though A came first
    assert [t for t in order if t in a_jobs] == a_jobs  # FIFO within a key
    assert [t for t in order if t in b_jobs] == b_jobs
    assert {t: order.index(t) + 1 for t in order} == positions
    assert record_a.owner != record_b.owner
