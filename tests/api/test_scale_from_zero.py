"""With EASEL_REQUIRE_LIVE_WORKER=false (autoscaling from zero), a job is queued for a GPU
class that has no live worker yet, so the queue's length can wake one."""

from __future__ import annotations

import json
import uuid

from api import create_app
from api.auth import owner_id
from shared.jobs import connect_redis
from shared.queues import GENERATE_TASK
from tests.conftest import API_KEY, data_uri, png_bytes, settings_from


def test_a_job_is_queued_while_its_class_has_no_worker(
    stack_env: dict[str, str], auth: dict[str, str]
) -> None:
    queue = f"zero-{uuid.uuid4().hex[:8]}.h100"
    queues = json.dumps({"a10g": f"{queue}-a", "a100": f"{queue}-b", "h100": queue})
    settings = settings_from(stack_env, queues=queues, require_live_worker="false")
    client = create_app(settings).test_client()
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True}
    redis = connect_redis(settings)
    try:
        answer = client.post(
            "/getImageToImage", json={**body, "inference_type": "h100"}, headers=auth
        )
        assert answer.status_code == 200, answer.json
        assert answer.json["state"] == "queued" and answer.json["queue_position"] == 1
        assert redis.llen(queue) == 1  # Celery's list on Redis: what KEDA scales on
        message = json.loads(redis.lindex(queue, 0))
        assert message["headers"]["task"] == GENERATE_TASK  # a turn; the job waits in its lane
        assert redis.lrange(f"easel:lane:{queue}:{owner_id(API_KEY)}", 0, -1) == [
            answer.json["task_id"].encode()
        ]
    finally:
        redis.delete(queue, f"easel:queued:{queue}", f"easel:lanes:{queue}")


def test_by_default_a_class_without_workers_is_refused(
    stack_env: dict[str, str], auth: dict[str, str]
) -> None:
    settings = settings_from(stack_env, queues='{"h100": "nobody-home.h100"}')
    client = create_app(settings).test_client()
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "inference_type": "h100"}
    answer = client.post("/getImageToImage", json=body, headers=auth)
    assert answer.status_code == 503
    assert answer.json["error"].startswith("inference_type: no live worker")
