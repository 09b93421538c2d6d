"""Checking that a webhook really came from your Easel server.

Easel signs deliveries per the Standard Webhooks spec, so any Standard Webhooks library
verifies them; this helper wraps the reference ``standardwebhooks`` package::

    from client.webhooks import verify_webhook

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

from collections.abc import Mapping
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

__all__ = ["InvalidWebhook", "verify_webhook"]


class InvalidWebhook(ValueError):
    """The delivery's signature or timestamp does not check out; answer it with 400."""


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The parsed event ``{"type", "timestamp", "data"}``, or InvalidWebhook.

    ``body`` must be the raw request body, byte for byte; ``secret`` is the server's
    ``EASEL_WEBHOOK_SECRET`` (``whsec_...``). Deliveries older than five minutes fail,
    which stops replays.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        event = Webhook(secret).verify(body, lowered)
    except WebhookVerificationError as exc:
        raise InvalidWebhook(str(exc)) from None
    if not isinstance(event, dict):
        raise InvalidWebhook("the payload is not a JSON object")
    return event
