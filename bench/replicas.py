"""Section 10 of ``make bench``: what confirming each job on a replica adds to a submit.

``EASEL_REDIS_WAIT_REPLICAS=1`` makes a submit wait (Redis WAIT) until a replica holds the
job before answering, so a failover cannot lose a job already acknowledged. The stack's
Valkey gets a replica on loopback; two APIs, one with WAIT and one without, take the same
sequential submits in alternating rounds (the machine is shared and noisy: alternating
spreads its noise over both), and the section reports the p50 of each and the difference.
The failover itself is measured by the fault suite (``make faults``, tests/faults/
test_failover.py): how long submits answer 503, and when the last job ends.
"""

from __future__ import annotations

import time
from statistics import median
from typing import Any

import httpx
import redis

from bench.report import Row
from bench.stack import BenchStack, FakeHeartbeat, bench_queues, data_uri, sample_png
from easel.stack import start_redis, wait_until

PREFIX = "bench-replicas"
ROUNDS = 6
PER_ROUND = 100
TARGET_MS = 1.0  # what the confirmation may add to submit p50, on loopback


def run(stack: BenchStack) -> tuple[list[Row], dict[str, Any]]:
    """Submit p50 with and without WAIT for one replica; rows and raw figures."""
    replica = start_redis(stack.state / "replica")
    try:
        link = redis.Redis(port=replica.port)
        link.replicaof("127.0.0.1", stack.redis_server.port)

        def linked() -> None:
            info = stack.redis.info("replication")
            assert info.get("connected_slaves") == 1, info
            assert info["slave0"]["state"] == "online", info

        wait_until(linked, 60, "the replica")
        return measure(stack)
    finally:
        replica.stop()


def measure(stack: BenchStack) -> tuple[list[Row], dict[str, Any]]:
    queues = bench_queues(PREFIX)
    settings = stack.settings_with(EASEL_QUEUES=queues)
    body = {"app_id": "tiny-sd", "image": data_uri(sample_png(64, 64)), "celery": True}
    latencies: dict[str, list[float]] = {"off": [], "on": []}
    heartbeat = FakeHeartbeat(
        stack.redis, list(settings.queues.values()), settings.worker_stale_after_s
    )
    with (
        stack.api(EASEL_QUEUES=queues) as (plain, _),
        stack.api(EASEL_QUEUES=queues, EASEL_REDIS_WAIT_REPLICAS="1") as (waiting, _),
        heartbeat,
    ):
        urls = {"off": plain, "on": waiting}
        clients = {
            name: httpx.Client(base_url=url, headers=stack.headers, timeout=30)
            for name, url in urls.items()
        }
        try:
            for client in clients.values():  # warm: connections, scripts, imports
                for _ in range(20):
                    client.post("/getImageToImage", json=body).raise_for_status()
            for _ in range(ROUNDS):
                for name, client in clients.items():
                    for _ in range(PER_ROUND):
                        started = time.perf_counter()
                        client.post("/getImageToImage", json=body).raise_for_status()
                        latencies[name].append(time.perf_counter() - started)
        finally:
            for client in clients.values():
                client.close()
    for queue in settings.queues.values():  # nothing consumes these
        stack.redis.delete(queue)
    p50 = {name: median(values) * 1000 for name, values in latencies.items()}
    added = p50["on"] - p50["off"]
    details = {
        "requests_each": ROUNDS * PER_ROUND,
        "p50_ms": {name: round(value, 3) for name, value in p50.items()},
        "added_p50_ms": round(added, 3),
    }
    section = "10 replicas"
    rows = [
        Row(
            section,
            "submit p50, confirmed on 1 replica (WAIT)",
            f"{p50['on']:.2f} ms",
            f"without WAIT {p50['off']:.2f} ms (same run, alternating rounds)",
            f"+<= {TARGET_MS:.0f} ms",
            added <= TARGET_MS,
            details,
        ),
    ]
    return rows, details
