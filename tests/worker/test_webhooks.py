"""Webhook delivery: Standard Webhooks signatures a receiver can verify, each key's own
secret, the retry deadline, and the slots and circuits that keep one receiver from holding
up the others (the real process is tested in tests/integration/test_webhooks.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import pytest
import redis
from easel_client import InvalidWebhook, verify_webhook
from standardwebhooks import Webhook

from shared.jobs import connect_redis, key
from shared.keys import KeyStore
from shared.netguard import GuardedHttp, UrlPolicy
from shared.settings import Settings
from shared.webhooks import with_key_id
from tests.conftest import ROOT, WEBHOOK_SECRET, serve, settings_from
from worker.webhooks import Deliverer, Gate, Message, backoff, deliver, host_of, retry_for

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = json.dumps({"type": "task.completed", "timestamp": "t", "data": {"task_id": "abc"}})


class Receiver(BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    seen: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((dict(self.headers), body))
        self.send_response(self.answers.pop(0) if self.answers else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.answers, Receiver.seen = [], []
    with serve(Receiver) as url:
        yield f"{url}/hook"


def test_a_delivery_verifies_with_the_sdk_helper(receiver: str, loopback_http: GuardedHttp) -> None:
    assert deliver(loopback_http, Webhook(SECRET), receiver, "msg_1", BODY, 5) is None
    headers, body = Receiver.seen[0]
    event: dict[str, Any] = verify_webhook(body, headers, SECRET)
    assert event["data"]["task_id"] == "abc"
    assert {k.lower(): v for k, v in headers.items()}["webhook-id"] == "msg_1"


def test_a_tampered_or_foreign_delivery_fails_verification(
    receiver: str, loopback_http: GuardedHttp
) -> None:
    deliver(loopback_http, Webhook(SECRET), receiver, "msg_1", BODY, 5)
    headers, body = Receiver.seen[0]
    with pytest.raises(InvalidWebhook):
        verify_webhook(body.replace(b"abc", b"abd"), headers, SECRET)
    other = "whsec_" + base64.b64encode(b"f" * 32).decode()
    with pytest.raises(InvalidWebhook):
        verify_webhook(body, headers, other)


def test_a_non_2xx_answer_is_reported(receiver: str, loopback_http: GuardedHttp) -> None:
    Receiver.answers = [500]
    assert deliver(loopback_http, Webhook(SECRET), receiver, "msg_1", BODY, 5) == "HTTP 500"


def test_a_redirect_is_not_followed(loopback_http: GuardedHttp, receiver: str) -> None:
    Receiver.answers = [307]  # without Location: reported as the status it is
    assert deliver(loopback_http, Webhook(SECRET), receiver, "msg_1", BODY, 5) == "HTTP 307"


def test_private_receivers_are_refused_without_the_allowlist(receiver: str) -> None:
    port = int(receiver.split(":")[2].split("/")[0])
    guarded = GuardedHttp(UrlPolicy(allowed_ports=[port]))
    problem = deliver(guarded, Webhook(SECRET), receiver, "msg_1", BODY, 5)
    guarded.close()
    assert problem == "the URL policy refused the receiver"  # its host stays out of the logs
    assert Receiver.seen == []


def test_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    assert [backoff(i) for i in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30) == 600.0
    assert [backoff(i, 0.25, 1.0) for i in range(4)] == [0.25, 0.5, 1.0, 1.0]


def test_each_event_has_its_deadline() -> None:
    settings = Settings(webhook_retry_for_s=3 * 3600)
    assert retry_for("completed", settings) == 3 * 3600
    assert 0 < retry_for("start", settings) <= 60
    assert retry_for("progress", settings) == 0  # progress may drop


def test_the_body_names_the_signing_key_and_keeps_the_rest() -> None:
    event = json.loads(with_key_id(BODY, "3f9c2a1b7d4e"))
    assert event == {**json.loads(BODY), "key_id": "3f9c2a1b7d4e"}
    assert json.loads(with_key_id(json.dumps(event), "other"))["key_id"] == "other"


def test_hosts_are_counted_by_host_and_port() -> None:
    assert host_of("https://Hooks.Example.com/a?b") == "hooks.example.com:443"
    assert host_of("http://hooks.example.com/a") == "hooks.example.com:80"
    assert host_of("http://127.0.0.1:8080/a") == "127.0.0.1:8080"


def test_the_gate_gives_a_host_and_a_key_at_most_their_share() -> None:
    gate = Gate(share=2, failures=5, cooldown_s=30)
    assert gate.enter("h:80", "a") is None and gate.enter("h:80", "b") is None
    assert gate.enter("h:80", "c") == 0.0  # the host is busy: try again shortly
    assert gate.enter("g:80", "a") is None
    assert gate.enter("f:80", "a") == 0.0  # a's share, whatever host it names
    assert gate.enter("f:80", "c") is None
    gate.leave("h:80", "a", ok=True)
    assert gate.enter("h:80", "c") is None


def test_a_failing_host_is_closed_for_its_cool_down_and_reopens_on_success() -> None:
    gate = Gate(share=1, failures=3, cooldown_s=30)

    def attempt(ok: bool) -> None:
        assert gate.enter("h:80", "a") is None
        gate.leave("h:80", "a", ok=ok)

    for _ in range(3):
        attempt(ok=False)
    closed_for = gate.enter("h:80", "b")
    assert closed_for is not None and 29 < closed_for <= 30
    assert gate.enter("g:80", "b") is None  # other hosts are unaffected
    gate._open_until["h:80"] = 0  # as if the cool-down were over
    attempt(ok=False)  # one more failure closes it again at once
    assert gate.enter("h:80", "c") is not None
    gate._open_until["h:80"] = 0
    attempt(ok=True)  # one success forgets the failures
    attempt(ok=False)
    attempt(ok=False)
    assert gate.enter("h:80", "c") is None


# --- one message through the Deliverer, on the session's Valkey ---------------------------


@pytest.fixture
def deliverer(stack_env: dict[str, str]) -> Iterator[Deliverer]:
    settings = settings_from(
        stack_env, webhook_retry_for_s="30", webhook_backoff_base_s="0.5",
        webhook_host_failures="100", webhook_host_cooldown_s="5",
        webhook_max_pending_per_key="2",
    )  # fmt: skip
    made = Deliverer(settings, concurrency=8)
    yield made
    made.http.close()


def message(
    url: str, event: str = "completed", owner: str | None = None, since: float | None = None
) -> Message:
    first = time.time() if since is None else since
    return Message(url, f"msg_{time.time_ns()}", BODY, event, owner, first)


def test_a_keys_delivery_is_signed_with_its_own_secret_and_names_it(
    deliverer: Deliverer, receiver: str
) -> None:
    _, record = deliverer.keys.create("signed", "60/minute", 8)
    assert deliverer.handle(message(receiver, owner=record.owner)) is None
    headers, body = Receiver.seen[0]
    event = verify_webhook(body, headers, deliverer.keys.webhook_secret(record))
    assert event["key_id"] == record.id and event["data"]["task_id"] == "abc"
    with pytest.raises(InvalidWebhook):
        verify_webhook(body, headers, WEBHOOK_SECRET)


def test_an_owner_that_is_no_stored_key_is_the_bootstrap_keys(
    deliverer: Deliverer, receiver: str
) -> None:
    for owner in ("0123456789abcdef", None):  # None: queued before messages named owners
        assert deliverer.handle(message(receiver, owner=owner)) is None
    for headers, body in Receiver.seen:
        assert verify_webhook(body, headers, WEBHOOK_SECRET)["key_id"] == "bootstrap"


def test_a_failed_delivery_is_retried_with_backoff_until_its_deadline(
    deliverer: Deliverer, receiver: str
) -> None:
    Receiver.answers = [500, 500]
    sent = message(receiver)
    assert deliverer.handle(sent) == 0.5 and sent.attempts == 1
    late = message(receiver, since=time.time() - 29.9)
    countdown = deliverer.handle(late)
    assert countdown is not None and countdown <= 0.1  # the last try is at the deadline
    Receiver.answers = [500]
    assert deliverer.handle(message(receiver, since=time.time() - 31)) is None  # given up
    Receiver.answers = [500]
    assert deliverer.handle(message(receiver, event="progress")) is None  # never retried


def test_a_closed_host_is_not_called_and_its_deliveries_wait_out_the_cool_down(
    deliverer: Deliverer, receiver: str
) -> None:
    deliverer.gate.failures = 2
    Receiver.answers = [500, 500]
    for _ in range(2):
        deliverer.handle(message(receiver))
    seen = len(Receiver.seen)
    countdown = deliverer.handle(message(receiver))
    assert countdown is not None and countdown >= deliverer.settings.webhook_host_cooldown_s - 0.1
    assert deliverer.handle(message(receiver, event="progress")) is None  # dropped
    assert len(Receiver.seen) == seen


def test_past_the_pending_cap_start_drops_and_completed_waits_the_cap(
    deliverer: Deliverer, receiver: str
) -> None:
    _, record = deliverer.keys.create("pending", "60/minute", 8)
    client: redis.Redis = connect_redis(deliverer.settings)
    Receiver.answers = [500] * 4
    first, second = (message(receiver, owner=record.owner) for _ in range(2))
    assert deliverer.handle(first) == 0.5 and deliverer.handle(second) == 0.5
    assert client.zcard(key("webhookpending", record.owner)) == 2
    assert deliverer.handle(message(receiver, "start", record.owner)) is None
    late = deliverer.handle(message(receiver, owner=record.owner))
    assert late is not None and 29 < late <= 30  # the backoff cap, cut to the deadline
    Receiver.answers = []
    assert deliverer.handle(first) is None  # delivered: no longer pending
    members = client.zrange(key("webhookpending", record.owner), 0, -1)
    assert first.msg_id.encode() not in members and second.msg_id.encode() in members
    assert 0 < client.ttl(key("webhookpending", record.owner)) <= 30 + 600 + 60


def test_the_deliverer_reads_keys_without_the_api_rate_library(stack_env: dict[str, str]) -> None:
    """The webhook process runs from the worker image, which has no ``limits``."""
    settings = settings_from(stack_env)
    _, record = KeyStore(connect_redis(settings), settings).create("no-limits", "60/minute", 8)
    probe = (
        "import sys; sys.modules['limits'] = None\n"
        "from worker.webhooks import Deliverer\n"
        "from shared.settings import Settings\n"
        f"print(Deliverer(Settings(), 4).signer({record.id!r})[0])"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **stack_env}, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert found.stdout.strip() == record.id
