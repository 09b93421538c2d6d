"""Easel's Python SDK::

    from client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as easel:
        task = easel.image_to_image("photo.jpg", "an oil painting", batch=2)
        task.wait(progress=True)        # a tqdm bar: queued (position N), then steps
        paths = task.images("results/")

It ships to users on its own: it imports only httpx, tqdm and the standard library,
never ``api``, ``worker`` or ``shared``, and reads the API's JSON as plain data.
``verify_webhook`` (``client.webhooks``) needs the ``standardwebhooks`` package too, so
it is imported only when first used.
"""

from typing import TYPE_CHECKING, Any

from client._client import Client
from client._task import Progress, Task
from client.errors import (
    APIConnectionError,
    APIError,
    BadRequest,
    Conflict,
    EaselError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TaskCanceled,
    TaskError,
    TaskFailed,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)

if TYPE_CHECKING:
    from client.webhooks import InvalidWebhook, verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "BadRequest",
    "Client",
    "Conflict",
    "EaselError",
    "InvalidWebhook",
    "NotFound",
    "PayloadTooLarge",
    "Progress",
    "RateLimited",
    "Task",
    "TaskCanceled",
    "TaskError",
    "TaskFailed",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "verify_webhook",
]


def __getattr__(name: str) -> Any:
    """Import the webhook helper on first use, so the SDK alone needs only httpx and tqdm."""
    if name in ("verify_webhook", "InvalidWebhook"):
        from client import webhooks

        return getattr(webhooks, name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")
