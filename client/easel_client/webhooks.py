"""Checking that a webhook really came from your Easel server.

Easel signs deliveries per the Standard Webhooks spec (https://www.standardwebhooks.com),
so any Standard Webhooks library verifies them. This helper does the same check with the
standard library alone, so the SDK needs no extra package for it::

    from easel_client import verify_webhook

    @app.post("/easel-hook")
    def hook():
        event = verify_webhook(request.get_data(), request.headers, SECRET)
        if event["type"] == "task.completed":
            save(event["data"]["task_id"], event["data"]["output"])
        return "", 204

Deliveries of one event share a ``webhook-id`` across retries: store the ids you have handled
and ignore repeats.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["InvalidWebhook", "verify_webhook"]

SECRET_PREFIX = "whsec_"
# The spec's tolerance, either way: an older delivery is a replay, a newer one a bad clock.
TOLERANCE_S = 5 * 60


class InvalidWebhook(ValueError):
    """The delivery's signature or timestamp does not check out; answer it with 400."""


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The parsed event ``{"type", "key_id", "timestamp", "data"}``, or InvalidWebhook.

    ``body`` must be the raw request body, byte for byte; ``secret`` is your API key's
    webhook secret (``whsec_...``, from ``easel keys webhook-secret``; for the bootstrap key,
    the server's ``EASEL_WEBHOOK_SECRET``). Deliveries older than five minutes fail, which
    stops replays.
    """
    payload = body.encode() if isinstance(body, str) else body
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id, stamp, signatures = (
        lowered.get(name) for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not (msg_id and stamp and signatures):
        raise InvalidWebhook("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(stamp)
    except ValueError:
        raise InvalidWebhook(f"webhook-timestamp is not a Unix time: {stamp!r}") from None
    if abs(time.time() - sent_at) > TOLERANCE_S:
        raise InvalidWebhook("webhook-timestamp is more than five minutes from now")
    signed = f"{msg_id}.{sent_at}.".encode() + payload
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest())
    # The header lists space-separated "v1,<base64>" signatures, one per secret in use.
    offered = [sig.partition(",")[2] for sig in signatures.split() if sig.startswith("v1,")]
    if not any(hmac.compare_digest(expected, sig.encode()) for sig in offered):
        raise InvalidWebhook("no signature matches the secret")
    try:
        event = json.loads(payload)
    except ValueError:
        raise InvalidWebhook("the payload is not JSON") from None
    if not isinstance(event, dict):
        raise InvalidWebhook("the payload is not a JSON object")
    return event


def _key(secret: str) -> bytes:
    """The HMAC key: the secret's base64 after ``whsec_``."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Padding is added as the reference library does; b64decode ignores any extra.
        key = base64.b64decode(encoded + "==")
    except binascii.Error:
        raise ValueError("the webhook secret is not base64 after 'whsec_'") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key
