"""EASEL_REDIS_WAIT_REPLICAS on a real primary and replica: a submit is acknowledged only once
a replica holds the job; when none confirms in time, the answer is 503 and no trace of the
job is left (record, lane, in-flight slot, listing)."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api import create_app
from easel.stack import Server, start_redis, wait_until
from shared.jobs import JobStore, connect_redis, key
from shared.settings import Settings
from tests.conftest import data_uri, png_bytes, settings_from


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """A primary and one replica of it, on free ports."""
    workdir = tmp_path_factory.mktemp("replicated")
    primary = start_redis(Path(workdir) / "primary")
    replica = start_redis(Path(workdir) / "replica")
    redis.Redis(port=replica.port).replicaof("127.0.0.1", primary.port)

    def linked() -> None:
        info = redis.Redis(port=primary.port).info("replication")
        assert info["connected_slaves"] == 1 and info["slave0"]["state"] == "online", info

    wait_until(linked, 30, "replica link")
    yield primary, replica
    replica.stop()
    primary.stop()


def settings_for(stack_env: dict[str, str], primary: Server, replicas: int) -> Settings:
    queue = f"waittest-{uuid.uuid4().hex[:8]}"
    queues = json.dumps({"a10g": queue, "a100": f"{queue}-b", "h100": f"{queue}-c"})
    return settings_from(
        {**stack_env, "EASEL_REDIS_URL": primary.url}, queues=queues,
        require_live_worker="false", redis_wait_replicas=str(replicas),
        redis_wait_timeout_ms="300",
    )  # fmt: skip


def submit(settings: Settings, auth: dict[str, str]) -> tuple[int, dict[str, object]]:
    client = create_app(settings).test_client()
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True}
    answer = client.post("/getImageToImage", json=body, headers=auth)
    return answer.status_code, answer.json or {}


def test_a_job_a_replica_confirmed_is_accepted(
    replicated: tuple[Server, Server], stack_env: dict[str, str], auth: dict[str, str]
) -> None:
    primary, replica = replicated
    settings = settings_for(stack_env, primary, replicas=1)
    status, answer = submit(settings, auth)
    assert status == 200, answer
    task_id = str(answer["task_id"])
    mirror = redis.Redis(port=replica.port)
    assert mirror.exists(key("job", task_id)) == 1  # already on the replica when answered


def test_unconfirmed_in_time_is_a_503_that_leaves_nothing_behind(
    replicated: tuple[Server, Server], stack_env: dict[str, str], auth: dict[str, str]
) -> None:
    primary, replica = replicated
    settings = settings_for(stack_env, primary, replicas=1)
    client = connect_redis(settings)
    jobs = JobStore(client, settings.job_ttl_s)
    queue = settings.queue_for(settings.worker_gpu)
    indexes = ("easel:job:*", "easel:inflight:*", "easel:owner:*")

    def traces() -> dict[str, object]:
        found: dict[str, object] = {"jobs": set(client.keys(indexes[0]))}
        for pattern in indexes[1:]:
            for name in client.keys(pattern):
                found[name.decode()] = set(client.zrange(name, 0, -1))
        return found

    before = traces()
    replica.process.send_signal(signal.SIGSTOP)  # alive, linked, and confirming nothing
    try:
        status, answer = submit(settings, auth)
    finally:
        replica.process.send_signal(signal.SIGCONT)
    assert status == 503, answer
    assert "EASEL_REDIS_WAIT_REPLICAS" in str(answer["error"])
    assert traces() == before  # no record, no in-flight slot, nothing listed
    assert jobs.backlog(queue) == {}  # no job in a lane for its turn to take
    assert jobs.pop(queue, "w") is None
