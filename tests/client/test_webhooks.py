"""``verify_webhook`` (standard library only) against deliveries signed by the reference
``standardwebhooks`` package, which the server signs with."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from easel_client import InvalidWebhook, verify_webhook
from standardwebhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"sdk-test-webhook-secret-32-bytes").decode()
OTHER = "whsec_" + base64.b64encode(b"f" * 32).decode()
BODY = json.dumps({"type": "task.completed", "timestamp": "now", "data": {"task_id": "t1"}})


def signed(body: str = BODY, secret: str = SECRET, sent_at: float | None = None) -> dict[str, str]:
    """The headers Easel's server sends with ``body``."""
    stamp = datetime.fromtimestamp(time.time() if sent_at is None else sent_at, tz=UTC)
    signature = Webhook(secret).sign("msg_1", stamp, body)
    return {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(int(stamp.timestamp())),
        "Webhook-Signature": signature,
    }


def test_a_delivery_signed_by_the_reference_library_verifies() -> None:
    headers = signed()
    event = verify_webhook(BODY.encode(), headers, SECRET)
    assert event == Webhook(SECRET).verify(BODY, headers)
    assert event["data"]["task_id"] == "t1"
    assert verify_webhook(BODY, headers, SECRET) == event  # the body as text works too


def test_any_matching_signature_of_several_verifies() -> None:
    headers = signed()
    rotated = signed(secret=OTHER)["Webhook-Signature"]
    headers["Webhook-Signature"] = f"v1a,AAAA {rotated} {headers['Webhook-Signature']}"
    assert verify_webhook(BODY, headers, SECRET)["type"] == "task.completed"


def test_a_delivery_that_does_not_check_out_is_invalid() -> None:
    cases = {
        "tampered body": (BODY.replace("t1", "t2"), signed(), SECRET),
        "another secret": (BODY, signed(), OTHER),
        "replayed": (BODY, signed(sent_at=time.time() - 310), SECRET),
        "from the future": (BODY, signed(sent_at=time.time() + 310), SECRET),
        "not a time": (BODY, {**signed(), "Webhook-Timestamp": "soon"}, SECRET),
        "unsigned": (BODY, {"Webhook-Id": "msg_1"}, SECRET),
        "not an object": ("[1, 2]", signed("[1, 2]"), SECRET),
    }
    accepted = []
    for case, (body, headers, secret) in cases.items():
        try:
            verify_webhook(body, headers, secret)
            accepted.append(case)
        except InvalidWebhook:
            pass
    assert accepted == []


@pytest.mark.parametrize(("secret", "error"), [("whsec_a", "not base64"), ("whsec_", "empty")])
def test_a_bad_secret_is_a_configuration_error_not_a_bad_delivery(secret: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as raised:
        verify_webhook(BODY, signed(), secret)
    assert not isinstance(raised.value, InvalidWebhook)
