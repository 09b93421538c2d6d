"""Easel's Python SDK (the ``easel-client`` distribution)::

    from easel_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as easel:
        task = easel.image_to_image("photo.jpg", "an oil painting", batch=2)
        task.wait(progress=True)        # a tqdm bar: queued (position N), then steps
        paths = task.images("results/")

``AsyncClient`` and ``AsyncTask`` offer the same calls for asyncio (``await``
``task.wait()``, ``async for task in easel.tasks()``). It needs only httpx and tqdm, never
the server's packages, and reads the API's JSON as plain data.
"""

from easel_client._async import AsyncClient, AsyncTask
from easel_client._core import ImageInput
from easel_client._sync import Client, Task
from easel_client._task import BaseTask, Progress
from easel_client._version import __version__
from easel_client.errors import (
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
from easel_client.webhooks import InvalidWebhook, verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AsyncTask",
    "BadRequest",
    "BaseTask",
    "Client",
    "Conflict",
    "EaselError",
    "ImageInput",
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
    "__version__",
    "verify_webhook",
]
