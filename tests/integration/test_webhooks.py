"""Webhooks on the real stack: a loopback receiver checks every signature, sees the events in
order, sees ``completed`` retried after it answers 500, and never holds up a job or a cancel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from client.webhooks import InvalidWebhook, verify_webhook
from tests.conftest import WEBHOOK_SECRET
from tests.integration.test_generation import poll, submit
from tests.integration.test_job_control import SLOW

pytestmark = pytest.mark.integration


@dataclass
class Delivery:
    path: str
    webhook_id: str
    event: dict[str, Any]


class Receiver:
    """Records verified deliveries by path; ``/flaky`` answers 500 to the first two
    ``completed`` deliveries of each task, ``/hang`` holds every request until released."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.forged = 0
        self.failures: dict[str, int] = {}
        self.release = threading.Event()
        self.hanging = 0
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        try:
            event = verify_webhook(body, headers, WEBHOOK_SECRET)
        except InvalidWebhook:
            with self.lock:
                self.forged += 1
            return 400
        webhook_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        with self.lock:
            self.deliveries.append(Delivery(path, webhook_id, event))
        if path == "/hang":
            with self.lock:
                self.hanging += 1
            self.release.wait(60)
        if path == "/flaky" and event["type"] == "task.completed":
            with self.lock:
                count = self.failures[webhook_id] = self.failures.get(webhook_id, 0) + 1
            if count <= 2:
                return 500
        return 204

    def of(self, task_id: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.event["data"]["task_id"] == task_id]

    def wait_for(self, check: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"receiver never saw it; deliveries: {self.deliveries}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.handle(self.path, dict(self.headers), body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


def completed(deliveries: list[Delivery]) -> list[Delivery]:
    return [d for d in deliveries if d.event["type"] == "task.completed"]


def test_signed_start_progress_completed_in_order(
    client: httpx.Client, receiver: tuple[Receiver, str]
) -> None:
    state, base = receiver
    task_id = submit(client, inference_type="h100", webhook=f"{base}/ok", **SLOW).json()["task_id"]
    assert poll(client, task_id, 120)["status"] == "SUCCESS"
    state.wait_for(lambda: bool(completed(state.of(task_id))))
    deliveries = state.of(task_id)
    types = [d.event["type"] for d in deliveries]
    assert types[0] == "task.start", types
    assert types[-1] == "task.completed", types
    progress = [
        d.event["data"]["progress"]["step"] for d in deliveries if "progress" in d.event["type"]
    ]
    assert set(types[1:-1]) == {"task.progress"}, types
    assert progress == sorted(progress), progress
    final = deliveries[-1].event["data"]
    assert final["status"] == "SUCCESS" and len(final["output"]["images"]) == SLOW["batch"]
    assert httpx.get(final["output"]["images"][0], timeout=10).status_code == 200
    assert len({d.webhook_id for d in deliveries}) == len(deliveries)  # one id per event
    assert state.forged == 0


def test_events_filter_sends_only_what_was_asked(
    client: httpx.Client, receiver: tuple[Receiver, str]
) -> None:
    state, base = receiver
    answer = submit(
        client, inference_type="h100", celery=True, webhook=f"{base}/ok",
        webhook_events_filter=["completed"],
    )  # fmt: skip
    task_id = answer.json()["task_id"]
    assert answer.json()["input"]["webhook_events_filter"] == ["completed"]
    assert poll(client, task_id)["status"] == "SUCCESS"
    state.wait_for(lambda: bool(completed(state.of(task_id))))
    time.sleep(0.5)  # anything else queued would have arrived by now
    assert [d.event["type"] for d in state.of(task_id)] == ["task.completed"]


def test_completed_is_retried_after_500s(
    client: httpx.Client, receiver: tuple[Receiver, str]
) -> None:
    state, base = receiver
    answer = submit(
        client, inference_type="h100", celery=True, webhook=f"{base}/flaky",
        webhook_events_filter=["completed"],
    )  # fmt: skip
    task_id = answer.json()["task_id"]
    assert poll(client, task_id)["status"] == "SUCCESS"
    state.wait_for(lambda: len(completed(state.of(task_id))) >= 3, timeout_s=60)
    tries = completed(state.of(task_id))
    assert len({d.webhook_id for d in tries}) == 1  # the same event, retried
    time.sleep(1.0)
    assert len(completed(state.of(task_id))) == 3  # the 204 ended the retries


def test_a_hanging_receiver_holds_up_neither_job_nor_cancel(
    client: httpx.Client, receiver: tuple[Receiver, str]
) -> None:
    state, base = receiver
    hook = {"webhook": f"{base}/hang", "inference_type": "h100"}
    first = submit(client, celery=True, **hook).json()["task_id"]
    blocker = submit(client, **{**SLOW, **hook}).json()["task_id"]
    queued = submit(client, celery=True, **hook).json()["task_id"]
    state.wait_for(lambda: state.hanging >= 1)
    # Every delivery so far is stuck in the receiver, and still:
    assert poll(client, first, 120)["status"] == "SUCCESS"
    answer = client.post(f"/tasks/{queued}/cancel")
    assert answer.json()["status"] == "CANCELED"
    assert not state.release.is_set()
    state.release.set()
    assert poll(client, blocker, 120)["status"] == "SUCCESS"
    state.wait_for(lambda: bool(completed(state.of(queued))))
    assert completed(state.of(queued))[0].event["data"]["status"] == "CANCELED"
    assert [d.event["type"] for d in state.of(queued)] == ["task.completed"]  # it never started


@pytest.mark.parametrize(
    ("webhook", "problem"),
    [
        ("ftp://example.com/hook", "must be an http(s):// URL"),
        ("http://169.254.169.254/latest", "link-local"),
        ("http://10.1.2.3/hook", "private"),
        ("http://[::ffff:192.168.0.1]/hook", "private"),
        ("http://2130706433/hook", "non-canonical"),
        ("http://localhost/hook", "local name"),
        ("http://example.com:6379/hook", "port 6379"),
    ],
)
def test_unsafe_webhook_urls_are_refused_at_submit(
    client: httpx.Client, webhook: str, problem: str
) -> None:
    answer = submit(client, celery=True, webhook=webhook)
    assert answer.status_code == 400
    body = answer.json()
    assert body["status"] == "FAILED" and body["error"].startswith("webhook")
    assert problem in body["error"]
