"""Webhooks on the real stack: a loopback receiver checks every signature, sees the events in
order, sees ``completed`` retried after it answers 500, and never holds up a job or a cancel.
Then: ``completed`` retried until its deadline by a real ``easel webhooks`` process, each key's
deliveries signed with its own secret, and a hanging receiver of one key that barely delays
another key's ``completed``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from celery import Celery
from easel_client import InvalidWebhook, verify_webhook
from standardwebhooks import Webhook, WebhookVerificationError

from easel.dev import stop
from shared.jobs import connect_redis, key
from shared.keys import KeyStore
from shared.models import Envelope, JobState, WebhookEvent
from shared.queues import celery_config
from shared.settings import Settings
from shared.webhooks import WebhookPublisher, message_id
from tests.conftest import WEBHOOK_SECRET, job_record, serve, settings_from, spawn
from tests.integration.test_generation import poll, submit
from tests.integration.test_job_control import SLOW, watch

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
    # On the GPU before the next arrives: a worker runs jobs in the order their inputs are
    # ready, and the blocker's large one takes longest.
    watch(client, blocker, lambda e: e["state"] == "running")
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


# --- the retry deadline, each key's secret, and fairness between keys -----------------


@dataclass
class Arrival:
    at: float  # wall clock, when the receiver read it
    path: str
    headers: dict[str, str]
    body: bytes

    def event(self, secret: str) -> dict[str, Any]:
        """The delivery, verified with ``secret`` by the reference package."""
        return cast(dict[str, Any], Webhook(secret).verify(self.body, lower(self.headers)))


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class Listener:
    """A receiver on its own port (slots and circuits count by host and port): records
    every POST, answers ``answer(arrival)``; ``hang`` holds each request until released."""

    def __init__(self, answer: Callable[[Arrival], int] = lambda _: 204, hang: bool = False):
        self.arrivals: list[Arrival] = []
        self.answer, self.hang = answer, hang
        self.release = threading.Event()
        self.lock = threading.Lock()

    def handle(self, arrival: Arrival) -> int:
        with self.lock:
            self.arrivals.append(arrival)
        if self.hang:
            self.release.wait(120)
        return self.answer(arrival)

    def seen(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def wait_for(self, check: Callable[[list[Arrival]], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not check(self.seen()):
            assert time.monotonic() < deadline, f"never came: {len(self.seen())} arrivals"
            time.sleep(0.05)


@contextmanager
def listening(listener: Listener) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = listener.handle(Arrival(time.time(), self.path, dict(self.headers), body))
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    try:
        with serve(Handler) as url:
            yield url
    finally:
        listener.release.set()


@dataclass
class Tenant:
    api_key: str
    id: str
    secret: str  # its webhook secret

    def client(self, api_url: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=api_url, headers=auth, timeout=90)


def new_tenant(settings: Settings, name: str) -> Tenant:
    store = KeyStore(connect_redis(settings), settings)
    api_key, record = store.create(f"{name}-{secrets.token_hex(3)}", "100000/minute", 32)
    return Tenant(api_key, record.id, store.webhook_secret(record))


RETRY_FOR_S = 6.0


@pytest.fixture(scope="module")
def short_deliverer(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Settings]:
    """A real ``easel webhooks`` process of its own, on a queue of its own, with a 6 s
    deadline and backoff from 0.2 s capped at 1 s; its settings, to publish with."""
    queue = f"easel.webhooks.short-{secrets.token_hex(3)}"
    env = {
        **stack_env, "EASEL_WEBHOOK_QUEUE": queue, "EASEL_WEBHOOK_RETRY_FOR_S": str(RETRY_FOR_S),
        "EASEL_WEBHOOK_BACKOFF_BASE_S": "0.2", "EASEL_WEBHOOK_BACKOFF_CAP_S": "1",
        "EASEL_WEBHOOK_HOST_COOLDOWN_S": "1",
    }  # fmt: skip
    process = spawn(["webhooks", "--concurrency", "4"], env, logs_dir / "webhooks-short.log")
    yield settings_from(env)
    stop(process)


def publish_completed(settings: Settings, owner: str, webhook: str) -> str:
    """Queue a SUCCESS ``completed`` event as a GPU worker would; its webhook-id."""
    producer = Celery("test-producer", set_as_current=False)
    producer.config_from_object(celery_config(settings))
    record = job_record(str(uuid.uuid4()), owner=owner)
    record.state, record.webhook, record.webhook_events = (
        JobState.SUCCEEDED, webhook, [WebhookEvent.COMPLETED],
    )  # fmt: skip
    publisher = WebhookPublisher(producer.send_task, settings)
    assert publisher.publish(record, WebhookEvent.COMPLETED, Envelope.for_job(record))
    return message_id(record.task_id, WebhookEvent.COMPLETED)


def test_completed_is_retried_past_the_fourth_attempt_until_its_deadline(
    short_deliverer: Settings,
) -> None:
    tenant = new_tenant(short_deliverer, "deadline")
    failing = Listener(lambda arrival: 302 if len(failing.seen()) % 2 else 500)
    with listening(failing) as url:
        msg_id = publish_completed(short_deliverer, tenant.id, f"{url}/hook")
        failing.wait_for(lambda seen: len(seen) >= 5)  # Celery's default stops at 4
        quiet_since, count = time.monotonic(), len(failing.seen())
        while time.monotonic() - quiet_since < 4:  # until it has been silent for 4 s
            assert time.monotonic() - quiet_since < 60
            time.sleep(0.1)
            if len(failing.seen()) != count:
                quiet_since, count = time.monotonic(), len(failing.seen())
    tries = failing.seen()
    span = tries[-1].at - tries[0].at
    print(f"\n{len(tries)} POSTs over {span:.1f} s (deadline {RETRY_FOR_S:g} s)")
    assert {lower(t.headers)["webhook-id"] for t in tries} == {msg_id}
    assert all(t.event(tenant.secret)["key_id"] == tenant.id for t in tries)
    assert 5 <= len(tries) <= 40
    assert RETRY_FOR_S - 2 <= span <= RETRY_FOR_S + 3  # it kept on, and stopped, at the deadline
    pending = connect_redis(short_deliverer).zscore(key("webhookpending", tenant.id), msg_id)
    assert pending is None  # given up: no longer counted against the key


@pytest.fixture(scope="module")
def tenants(stack_settings: Settings, api_url: str) -> tuple[Tenant, Tenant]:
    return new_tenant(stack_settings, "tenant-a"), new_tenant(stack_settings, "tenant-b")


def test_each_keys_deliveries_verify_with_its_own_secret_only(
    api_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    # B's receiver checks with B's secret, as a receiver does: 400 if it does not verify.
    bs = Listener(lambda arrival: 204 if verifies(arrival, b.secret) else 400)
    with listening(bs) as url, a.client(api_url) as a_http, b.client(api_url) as b_http:
        hook = {"webhook": f"{url}/b", "webhook_events_filter": ["completed"], "celery": True}
        a_task = submit(a_http, inference_type="h100", **hook).json()["task_id"]
        b_task = submit(b_http, inference_type="h100", **hook).json()["task_id"]
        bs.wait_for(lambda seen: {task_of(x) for x in seen} >= {a_task, b_task})
    from_a = next(x for x in bs.seen() if task_of(x) == a_task)
    from_b = next(x for x in bs.seen() if task_of(x) == b_task)
    assert not verifies(from_a, b.secret)  # B's receiver rejects A's delivery,
    assert from_a.event(a.secret)["key_id"] == a.id  # which A's secret verifies
    assert verifies(from_b, b.secret) and from_b.event(b.secret)["key_id"] == b.id
    assert not verifies(from_b, WEBHOOK_SECRET)  # nor is it the bootstrap key's secret


def verifies(arrival: Arrival, secret: str) -> bool:
    try:
        arrival.event(secret)
    except WebhookVerificationError:
        return False
    return True


def task_of(arrival: Arrival) -> str:
    return cast(str, json.loads(arrival.body)["data"]["task_id"])


def test_a_hanging_receiver_delays_another_keys_completed_by_about_a_second_at_most(
    api_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    healthy, hanging = Listener(), Listener(hang=True)
    with (
        listening(healthy) as healthy_url, listening(hanging) as hanging_url,
        a.client(api_url) as a_http, b.client(api_url) as b_http,
    ):  # fmt: skip

        def b_completed_latency() -> float:
            hook = {"webhook": f"{healthy_url}/b", "webhook_events_filter": ["completed"]}
            task = submit(b_http, inference_type="h100", celery=True, **hook).json()["task_id"]
            healthy.wait_for(lambda seen: any(task_of(x) == task for x in seen), 120)
            (arrival,) = [x for x in healthy.seen() if task_of(x) == task]
            published = datetime.fromisoformat(arrival.event(b.secret)["timestamp"])
            return arrival.at - published.timestamp()

        baseline = b_completed_latency()
        for _ in range(8):  # the audit's scenario: 8 of A's jobs aimed at a receiver that hangs
            answer = submit(a_http, celery=True, webhook=f"{hanging_url}/a")
            assert answer.status_code == 200, answer.text
        hanging.wait_for(lambda seen: len(seen) >= 2)  # deliverer threads are held there now
        loaded = b_completed_latency()
        held = len(hanging.seen())
    print(f"\nB's completed: {baseline:.3f} s alone, {loaded:.3f} s beside A's hanging receiver "
          f"({held} of A's deliveries reached it)")  # fmt: skip
    assert loaded - baseline < 3.0
