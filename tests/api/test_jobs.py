"""What submit puts on the broker, read back from the real Redis list Celery writes."""

from __future__ import annotations

import base64
import json
import uuid

from api import create_app
from api.auth import owner_id
from shared.fairness import STRIDE_UNIT
from shared.jobs import JobStore, WorkerLiveness, connect_redis, key
from shared.keys import KeyStore
from shared.settings import Settings
from tests.api.conftest import UNSERVED_QUEUES
from tests.conftest import data_uri, png_bytes, settings_from


def test_the_message_is_a_turn_and_the_job_waits_in_its_keys_lane(
    stack_env: dict[str, str], auth: dict[str, str]
) -> None:
    queue = f"apitest.{uuid.uuid4().hex[:8]}"
    queues = {**json.loads(UNSERVED_QUEUES), "a10g": queue}
    settings = settings_from(stack_env, queues=json.dumps(queues), require_live_worker="false")
    client = create_app(settings).test_client()
    prompt = f"a secret prompt {uuid.uuid4().hex}"
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True,
            "inference_type": "a10g", "prompt": prompt}  # fmt: skip
    answer = client.post("/getImageToImage", json=body, headers=auth)
    assert answer.status_code == 200
    redis = connect_redis(settings)
    [raw] = redis.lrange(queue, 0, -1)
    redis.delete(queue)
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == []  # a turn: the worker pops the next job in fair order
    assert prompt not in raw.decode()
    jobs = JobStore(redis, settings.job_ttl_s)
    owner = jobs.get(answer.json["task_id"]).owner
    assert jobs.backlog(queue) == {owner: 1}
    assert jobs.pop(queue, "w") == answer.json["task_id"]
    jobs.unclaim(queue, answer.json["task_id"], ended=True)


def test_a_live_answer_is_trusted_for_a_second_and_a_dead_one_never(
    stack_settings: Settings,
) -> None:
    queue = f"livetest.{uuid.uuid4().hex[:8]}"
    redis = connect_redis(stack_settings)
    liveness = WorkerLiveness(redis, stale_after_s=30)
    assert not liveness.served(queue)
    liveness.beat(queue, "w1")
    assert liveness.served(queue)  # a no is asked again: the new worker is seen at once
    redis.delete(key("workers", queue))
    assert liveness.served(queue, fresh_s=60)  # the yes of a moment ago still stands
    assert not liveness.served(queue, fresh_s=0)  # past its freshness, Redis is asked


def test_a_submit_carries_its_keys_weight_into_the_fair_order(
    stack_env: dict[str, str], auth: dict[str, str]
) -> None:
    """A stored key's weight and the bootstrap key's (EASEL_BOOTSTRAP_WEIGHT) reach the
    lane state the fair pop reads: the lane's stride is STRIDE_UNIT // weight."""
    queue = f"weighttest.{uuid.uuid4().hex[:8]}"
    queues = {**json.loads(UNSERVED_QUEUES), "a10g": queue}
    settings = settings_from(
        stack_env, queues=json.dumps(queues), require_live_worker="false", bootstrap_weight="4"
    )
    client = create_app(settings).test_client()
    redis = connect_redis(settings)
    stored_key, record = KeyStore(redis, settings).create("weighted", "1000/minute", 10, 3)
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True,
            "inference_type": "a10g"}  # fmt: skip
    for headers in (auth, {"Authorization": f"Bearer {stored_key}"}):
        assert client.post("/getImageToImage", json=body, headers=headers).status_code == 200
    state = redis.hgetall(key("lanestate", queue))
    assert state[f"stride:{record.owner}".encode()] == str(STRIDE_UNIT // 3).encode()
    bootstrap = f"stride:{owner_id(auth['Authorization'].removeprefix('Bearer '))}"
    assert state[bootstrap.encode()] == str(STRIDE_UNIT // 4).encode()
    jobs = JobStore(redis, settings.job_ttl_s)
    while (task_id := jobs.pop(queue, "w")) is not None:
        jobs.unclaim(queue, task_id, ended=True)
    redis.delete(queue)
