"""Holding the load: waiting clients and slow sockets cost the API a socket, not a thread.

An ``easel api`` of the default size (2 gevent workers) is pointed at queues no worker
consumes, with a heartbeat that says one does, so every job stays queued and every wait
lasts its whole length. Before, 16 request threads in all meant 16 waiting clients
stalled everyone else.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from easel.dev import stop
from easel.stack import free_port, wait_until
from shared.jobs import connect_redis, key
from shared.settings import Settings
from tests.conftest import API_KEY, data_uri, png_bytes, seemingly_served, spawn

pytestmark = pytest.mark.integration

QUEUES = {"a10g": "held.a10g", "a100": "held.a100", "h100": "held.h100"}
HELD_POLLS = 400
HELD_SYNC = 100
SLOWLORIS = 256
BODY = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64))}


@pytest.fixture(scope="module")
def held_api(stack_env: dict[str, str], stack_settings: Settings, logs_dir: Path) -> Iterator[str]:
    """``easel api`` on unserved queues, kept accepting by a heartbeat of no real worker."""
    env = {
        **stack_env,
        "EASEL_QUEUES": json.dumps(QUEUES),
        "EASEL_SYNC_WAIT_S": "30",
        "EASEL_MAX_WAITS_PER_KEY": "5000",
    }
    port = free_port()
    with seemingly_served(stack_settings, list(QUEUES.values())):
        process = spawn(["api", "--bind", f"127.0.0.1:{port}"], env, logs_dir / "api-held.log")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).raise_for_status(), 60, "API")
        yield url
        stop(process)
    connect_redis(stack_settings).delete(*QUEUES.values())


def raw_request(url: str, method: str, path: str, body: bytes = b"") -> socket.socket:
    """A socket that has sent a whole request and reads nothing: a client that waits."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def queued_task(client: httpx.Client) -> str:
    answer = client.post("/getImageToImage", json={**BODY, "celery": True})
    assert answer.status_code == 200, answer.text
    task_id: str = answer.json()["task_id"]
    return task_id


def held_waits(stack_settings: Settings, owner: str) -> int:
    client = connect_redis(stack_settings)
    return int(client.zcount(key("waits", owner), time.time(), "+inf"))


def owner_of_bootstrap() -> str:
    from api.auth import owner_id

    return owner_id(API_KEY)


def test_hundreds_of_waiting_clients_leave_health_and_submits_answering(
    held_api: str, stack_settings: Settings
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=held_api, headers=headers, timeout=10) as client:
        tasks = [queued_task(client) for _ in range(20)]
        sockets = [
            raw_request(held_api, "GET", f"/tasks/{tasks[i % len(tasks)]}?wait=30", b"")
            for i in range(HELD_POLLS)
        ]
        sync_body = json.dumps(BODY).encode()  # celery: false, the default: held until done
        sockets += [
            raw_request(held_api, "POST", "/getImageToImage", sync_body) for _ in range(HELD_SYNC)
        ]
        try:
            owner = owner_of_bootstrap()
            wait_until(
                lambda: _at_least(held_waits(stack_settings, owner), HELD_POLLS + HELD_SYNC),
                30,
                "every waiter held",
            )
            # With every wait held, the API still answers at once (the client's timeout is
            # 10 s; before, these waited behind the waits for up to 30 s).
            for _ in range(20):
                assert client.get("/health").status_code == 200
            assert client.post("/getImageToImage", json={**BODY, "celery": True}).status_code == 200
            assert client.get(f"/tasks/{tasks[0]}").json()["status"] == "PENDING"
        finally:
            for sock in sockets:
                sock.close()


def test_slowloris_sockets_leave_health_answering(held_api: str) -> None:
    host, port = held_api.removeprefix("http://").split(":")
    sockets = []
    try:
        for _ in range(SLOWLORIS):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
            sockets.append(sock)
        for _ in range(20):
            assert httpx.get(f"{held_api}/health", timeout=10).status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def test_a_sync_submit_over_the_wait_cap_is_429_and_leaves_no_job(
    stack_env: dict[str, str], held_api: str, stack_settings: Settings
) -> None:
    from api import create_app
    from api.auth import owner_id
    from tests.conftest import settings_from

    api_key = f"cap-test-{uuid.uuid4().hex}"  # an owner of its own, with no waits held
    settings = settings_from(
        stack_env, queues=json.dumps(QUEUES), max_waits_per_key="1", sync_wait_s="20",
        bootstrap_api_key=api_key,
    )  # fmt: skip
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {api_key}"}
    queued = client.post("/getImageToImage", json={**BODY, "celery": True}, headers=headers)
    task_id = queued.json["task_id"]
    holder = threading.Thread(
        target=lambda: client.get(f"/tasks/{task_id}?wait=5", headers=headers), daemon=True
    )
    owner = owner_id(api_key)
    holder.start()
    wait_until(lambda: _at_least(held_waits(stack_settings, owner), 1), 10, "a held wait")
    refused = client.post("/getImageToImage", json=BODY, headers=headers)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "2"
    assert refused.json["error"].startswith("max_waits: this API key already has 1 ")
    assert refused.json["error_data"] == {"max_waits": 1}
    listed = client.get("/tasks", headers=headers).json["tasks"]
    assert [t["task_id"] for t in listed] == [task_id]  # the refused submit made no job
    assert client.get(f"/tasks/{task_id}?wait=1", headers=headers).status_code == 429
    holder.join(timeout=30)
    assert client.get(f"/tasks/{task_id}?wait=0.1", headers=headers).status_code == 200
    assert held_waits(stack_settings, owner) == 0  # every slot given back


def _at_least(value: int, wanted: int) -> None:
    if value < wanted:
        raise AssertionError(f"{value} < {wanted}")
