"""Section 7: waiting clients. 1,000 concurrent waiters, then 256 slowloris sockets, against
one ``easel api`` of the default size (2 gevent workers).

The API is pointed at bench-only queues that no worker consumes, and a fake heartbeat
makes it accept, so every job stays queued and every wait lasts its whole length:
700 long polls (``GET /tasks/<id>?wait=60``) and 300 sync submits (``celery: false``),
each a raw socket that has sent its request and reads nothing. The baseline is the same
API a moment before, with no waiter: ``GET /health`` and an async submit, 300 of each
from 4 keep-alive clients. Goal: both p99s at most 2 x their baseline with the waiters
held. Then 256 sockets that send half a request line and stop; goal: ``/health`` p99
within 100 ms.

Last, 16 concurrent JSON submits of a 26 MiB body each (a 19.5 MB image as a data URI),
sampling the API's RSS every 20 ms: the peak sizes the k8s API pod's memory limit.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx

from bench.procs import children, vm_rss_mb
from bench.report import Row, ms, percentile
from bench.stack import BenchStack, FakeHeartbeat, bench_queues, data_uri, sample_png
from easel.stack import wait_until
from shared.jobs import key

PREFIX = "easel.bench.waiters"
LONG_POLLS, SYNC_SUBMITS, SLOWLORIS = 700, 300, 256
LARGE_BODIES, LARGE_IMAGE_BYTES = 16, 19_500_000
QUEUED_JOBS = 50
K8S_API_LIMIT_MB = 1024.0
CALLS, CLIENTS = 300, 4
RATIO_TARGET, SLOWLORIS_TARGET_S = 2.0, 0.1


def latencies(url: str, headers: dict[str, str], method: str, path: str, body: Any) -> list[float]:
    """CALLS requests from CLIENTS keep-alive clients; each one's seconds."""
    found: list[float] = []
    lock = threading.Lock()

    def loop() -> None:
        mine = []
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for _ in range(CALLS // CLIENTS):
                started = time.perf_counter()
                client.request(method, path, json=body).raise_for_status()
                mine.append(time.perf_counter() - started)
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


def raw(url: str, data: bytes) -> socket.socket:
    """A socket that has sent ``data`` and reads nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(data)
    return sock


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def api_process_facts(pid: int) -> dict[str, Any]:
    """RSS and open descriptors of gunicorn's master and each worker."""
    from pathlib import Path

    facts = {}
    for each in [pid, *children(pid)]:
        facts[each] = {
            "rss_mb": round(vm_rss_mb(each), 1),
            "fds": len(list(Path(f"/proc/{each}/fd").iterdir())),
        }
    return facts


def p99s(url: str, headers: dict[str, str], submit_body: dict[str, Any]) -> dict[str, float]:
    health = latencies(url, headers, "GET", "/health", None)
    submits = latencies(url, headers, "POST", "/getImageToImage", submit_body)
    return {"health_p99_s": percentile(health, 99), "submit_p99_s": percentile(submits, 99)}


def run(stack: BenchStack) -> tuple[list[Row], dict[str, Any]]:
    """Measure the API with and without 1,000 waiters, and under slowloris."""
    settings = stack.settings_with(EASEL_QUEUES=bench_queues(PREFIX))
    queues = list(settings.queues.values())
    image = data_uri(sample_png(64, 64))
    async_body = {"app_id": "tiny-sd", "image": image, "celery": True}
    sync_body = json.dumps({"app_id": "tiny-sd", "image": image}).encode()
    headers = stack.headers
    heartbeat = FakeHeartbeat(stack.redis, queues, settings.worker_stale_after_s)
    env = {"EASEL_QUEUES": bench_queues(PREFIX), "EASEL_SYNC_WAIT_S": "60"}
    env["EASEL_MAX_WAITS_PER_KEY"] = "5000"
    sockets: list[socket.socket] = []
    with stack.api(**env) as (url, process), heartbeat:
        latencies(url, headers, "POST", "/getImageToImage", async_body)  # warm-up
        before = p99s(url, headers, async_body)
        idle_facts = api_process_facts(process.pid)
        used_before = int(stack.redis.info("memory")["used_memory"])
        with httpx.Client(base_url=url, headers=headers) as client:
            tasks = [client.post("/getImageToImage", json=async_body).json()["task_id"]
                     for _ in range(QUEUED_JOBS)]  # fmt: skip
        used = int(stack.redis.info("memory")["used_memory"]) - used_before
        per_job = job_keys_bytes(stack, tasks[0], queues[0]) | {"used_memory": used // QUEUED_JOBS}
        from api.auth import owner_id

        owner_waits = key("waits", owner_id(stack.key))
        try:
            for i in range(LONG_POLLS):
                path = f"/tasks/{tasks[i % len(tasks)]}?wait=60"
                sockets.append(raw(url, request_bytes("GET", path, headers)))
            for _ in range(SYNC_SUBMITS):
                sockets.append(
                    raw(url, request_bytes("POST", "/getImageToImage", headers, sync_body))
                )
            wanted = LONG_POLLS + SYNC_SUBMITS

            def all_held() -> None:
                held = int(stack.redis.zcount(owner_waits, time.time(), "+inf"))
                if held < wanted:
                    raise RuntimeError(f"{held}/{wanted} waiters held")

            wait_until(all_held, 60, "waiters")
            held = int(stack.redis.zcount(owner_waits, time.time(), "+inf"))
            loaded = p99s(url, headers, async_body)
            held_facts = api_process_facts(process.pid)
        finally:
            for sock in sockets:
                sock.close()
        slow = [
            raw(url, b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Slow: ") for _ in range(SLOWLORIS)
        ]
        try:
            health_slow = latencies(url, headers, "GET", "/health", None)
        finally:
            for sock in slow:
                sock.close()
        large = large_bodies(url, headers, process.pid)
    for queue in queues:  # nothing will ever consume these
        stack.redis.delete(queue, f"easel:queued:{queue}")
    result, details = rows(before, loaded, held, idle_facts, held_facts, health_slow)
    result.append(
        Row("7 waiters", "Redis bytes per queued job (inline image in S3)",
            f"{per_job['used_memory']} B (used_memory / {QUEUED_JOBS} jobs)",
            f"record {per_job['record']} B, message {per_job['message']} B", "<= 4096 B",
            per_job["used_memory"] <= 4096)
    )  # fmt: skip
    details["redis_bytes_per_queued_job"] = per_job
    peak = large["peak_rss_mb"]
    around = f"{large['idle_rss_mb']:.1f} MB before; after {large['after_rss_mb']:.1f} MB"
    result.append(
        Row("7 waiters", f"API RSS peak, {LARGE_BODIES} concurrent 26 MiB JSON submits",
            f"{peak:.1f} MB", around, f"<= {K8S_API_LIMIT_MB:.0f} MB (k8s limit)",
            peak <= K8S_API_LIMIT_MB)
    )  # fmt: skip
    return result, {**details, "large_bodies": large}


def job_keys_bytes(stack: BenchStack, task_id: str, queue: str) -> dict[str, int]:
    """MEMORY USAGE of one queued job's record and tomb, and the size of its message."""
    record = sum(int(stack.redis.memory_usage(key(kind, task_id)) or 0) for kind in ("job", "tomb"))
    message = max((len(m) for m in stack.redis.lrange(queue, 0, -1)), default=0)
    return {"record": record, "message": message}


def large_bodies(url: str, headers: dict[str, str], pid: int) -> dict[str, Any]:
    """Peak RSS of the API (master + workers) while LARGE_BODIES big submits arrive at once."""
    import base64
    import secrets

    image = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(LARGE_IMAGE_BYTES)  # the API reads the magic
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    body = json.dumps({"app_id": "tiny-sd", "celery": True, "image": uri})
    del image, uri

    def total() -> float:
        return sum(vm_rss_mb(each) for each in [pid, *children(pid)])

    idle, peak, statuses = total(), 0.0, []
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, total())
            time.sleep(0.02)

    def send() -> None:
        json_headers = {**headers, "Content-Type": "application/json"}
        with httpx.Client(base_url=url, headers=json_headers, timeout=120) as client:
            statuses.append(client.post("/getImageToImage", content=body).status_code)

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=send) for _ in range(LARGE_BODIES)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done.set()
    sampler.join()
    time.sleep(1)
    return {"idle_rss_mb": round(idle, 1), "peak_rss_mb": round(peak, 1),
            "after_rss_mb": round(total(), 1), "body_mb": round(len(body) / 2**20, 1),
            "statuses": sorted(statuses)}  # fmt: skip


def rows(
    before: dict[str, float],
    loaded: dict[str, float],
    held: int,
    idle_facts: dict[int, dict[str, Any]],
    held_facts: dict[int, dict[str, Any]],
    health_slow: list[float],
) -> tuple[list[Row], dict[str, Any]]:
    section = "7 waiters"
    health_ratio = loaded["health_p99_s"] / before["health_p99_s"]
    submit_ratio = loaded["submit_p99_s"] / before["submit_p99_s"]
    slow_p99 = percentile(health_slow, 99)
    rss_idle = sum(f["rss_mb"] for f in idle_facts.values())
    rss_held = sum(f["rss_mb"] for f in held_facts.values())
    fds = sum(f["fds"] for f in held_facts.values())
    result = [
        Row(section, f"waiters held by one API instance ({LONG_POLLS} polls + {SYNC_SUBMITS} sync)",
            f"{held}", "", f">= {LONG_POLLS + SYNC_SUBMITS}", held >= LONG_POLLS + SYNC_SUBMITS),
        Row(section, "GET /health p99 with the waiters / without",
            f"{health_ratio:.2f} ({ms(loaded['health_p99_s'])})",
            f"1.00 ({ms(before['health_p99_s'])})", f"<= {RATIO_TARGET:.0f}",
            health_ratio <= RATIO_TARGET),
        Row(section, "async submit p99 with the waiters / without",
            f"{submit_ratio:.2f} ({ms(loaded['submit_p99_s'])})",
            f"1.00 ({ms(before['submit_p99_s'])})", f"<= {RATIO_TARGET:.0f}",
            submit_ratio <= RATIO_TARGET),
        Row(section, "API RSS, master + 2 workers, with the waiters", f"{rss_held:.1f} MB",
            f"{rss_idle:.1f} MB without", "", None),
        Row(section, "API open descriptors with the waiters", f"{fds}", "", "", None),
        Row(section, f"GET /health p99 beside {SLOWLORIS} slowloris sockets", ms(slow_p99),
            f"{ms(before['health_p99_s'])} without", f"<= {SLOWLORIS_TARGET_S * 1000:.0f} ms",
            slow_p99 <= SLOWLORIS_TARGET_S),
    ]  # fmt: skip
    details = {"before": before, "with_waiters": loaded, "held": held,
               "api_idle": idle_facts, "api_with_waiters": held_facts,
               "health_beside_slowloris_p99_s": slow_p99}  # fmt: skip
    return result, details
