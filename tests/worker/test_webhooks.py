"""Webhook delivery: Standard Webhooks signatures a receiver can verify, and the retry plan."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import pytest
from standardwebhooks import Webhook

from client.webhooks import InvalidWebhook, verify_webhook
from shared.netguard import GuardedHttp, UrlPolicy
from tests.conftest import serve
from worker.webhooks import BACKOFF_CAP_S, backoff, deliver, retries_for

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
    assert problem is not None and "loopback" in problem
    assert Receiver.seen == []


def test_completed_is_retried_for_at_least_the_configured_time() -> None:
    for hours in (1, 3, 24):
        retries = retries_for("completed", hours * 3600)
        assert sum(backoff(i) for i in range(retries)) >= hours * 3600
        assert sum(backoff(i) for i in range(retries - 1)) < hours * 3600  # and no longer
    assert backoff(30) == BACKOFF_CAP_S
    assert retries_for("progress", 3600) == 0  # progress may drop
    assert 0 < retries_for("start", 3600) < retries_for("completed", 3600)
