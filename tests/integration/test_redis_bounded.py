"""Redis stays bounded in a steady state: after a few hundred jobs (async, sync, canceled
early and late, idempotent retries), every key Easel or Celery wrote either expires or is
one of a few structures whose size the live work bounds, and none holds our finished jobs.
"""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from shared.jobs import JobStore, key
from tests.conftest import data_uri, png_bytes

pytestmark = pytest.mark.integration

JOBS = 240
BODY = {
    "app_id": "tiny-sd", "image": data_uri(png_bytes(512, 512)), "strength": 0.15,
    "height": 512, "width": 512, "celery": True,
}  # fmt: skip

# Keys with no TTL, and what bounds each.
BOUNDED = {
    r"easel:queued:.+": "ids of jobs waiting on a queue; each leaves when it starts or ends",
    r"easel:running:.+": "ids of running jobs; each leaves when it ends",
    r"easel:unpublished:.+": "ids not yet confirmed on the broker; each leaves within seconds",
    r"easel:durations:.+": "the last 50 run times of a queue (LTRIM)",
    r"easel:workers:.+": "live workers of a queue, trimmed by every heartbeat",
    r"easel:hands:.+": "what each live worker of a queue has; a gone worker's entry is dropped "
    "at the next sweep",
    r"easel:lanes:.+": "the keys with jobs waiting on a queue; a key leaves when its lane empties",
    r"easel:lane:.+": "a key's waiting job ids; each leaves when it starts or ends",
    r"easel:lanestate:.+": "a queue's fair-order state: entries for the keys with jobs waiting "
    "and those that emptied their lane lately; the reaper forgets the rest",
    r"easel:claims:.+": "ids popped and not yet taken; each leaves within milliseconds",
    r"easel:held:.+": "ids workers hold; each leaves when it starts or ends",
    r"easel:apikeys?(id)?(:.+)?": "API keys, made and revoked by an operator",
    r"_kombu\.binding(_permanent)?\..+": "kombu's queue bindings: one member per queue",
    r"_kombu\.binding_deadlines": "kombu's binding bookkeeping: one entry per queue",
    r"unacked(_index)?": "Celery's delivered, unacknowledged messages: one per running job",
    r"easel\.(a10g|a100|h100|webhooks)": "Celery's queues: the waiting messages",
}


def submit(client: httpx.Client, number: int) -> str:
    """Every fourth sync, every fifth sent twice with one Idempotency-Key."""
    body = {**BODY, "seed": number, "celery": number % 4 != 0}
    headers = {"Idempotency-Key": f"bounded-{uuid.uuid4()}"} if number % 5 == 0 else {}
    answer = client.post("/getImageToImage", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    task_id: str = answer.json()["task_id"]
    if headers:
        again = client.post("/getImageToImage", json=body, headers=headers)
        assert again.json()["task_id"] == task_id
    if number % 3 == 0:  # canceled: while queued, while running, or after it ended
        client.post(f"/tasks/{task_id}/cancel")
    return task_id


def size_of(r: redis.Redis, name: str) -> int:
    kind = r.type(name).decode()
    counts = {"zset": r.zcard, "set": r.scard, "list": r.llen, "hash": r.hlen}
    return int(counts[kind](name)) if kind in counts else 1


def test_every_key_expires_or_is_bounded_after_hundreds_of_jobs(
    client: httpx.Client, job_store: JobStore
) -> None:
    lock = threading.Lock()
    ids: list[str] = []

    def one(number: int) -> None:
        task_id = submit(client, number)
        with lock:
            ids.append(task_id)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(JOBS)))
    for task_id in ids:
        answer = client.get(f"/tasks/{task_id}", params={"wait": 60}).json()
        assert answer["status"] != "PENDING", answer
    late = ids[:20]  # a cancel after the end leaves nothing behind
    for task_id in late:
        client.post(f"/tasks/{task_id}/cancel")

    r: redis.Redis = job_store.redis
    unbounded, sizes = [], {}
    for name in (n.decode() for n in r.scan_iter(count=1000)):
        if r.ttl(name) >= 0 or r.type(name) == b"none":
            continue
        if not any(re.fullmatch(pattern, name) for pattern in BOUNDED):
            unbounded.append(name)
        sizes[name] = size_of(r, name)
    assert unbounded == [], f"keys with no TTL and no bound: {unbounded[:20]}"
    # With the jobs drained, their queues hold none of them (the checks below); the rest
    # hold one entry per queue, worker or key, or the last 50 run times.
    print("largest keys without a TTL:", sorted(sizes.items(), key=lambda kv: -kv[1])[:8])
    for task_id in ids:
        assert not r.exists(key("cancel", task_id))
    for queue in ("easel.a10g", "easel.a100", "easel.h100"):
        for index in ("queued", "running", "unpublished"):
            left = {m.decode() for m in r.zrange(key(index, queue), 0, -1)}
            assert not left & set(ids), f"{index}:{queue} still holds finished jobs"
        assert r.llen(key("durations", queue)) <= 50
        assert not {m.decode() for m in r.lrange(queue, 0, -1)} & set(ids)  # no message left
