"""``Client``: one API key, one connection pool, the calls of Easel's HTTP API."""

from __future__ import annotations

import email.utils
import json
import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from client._task import Task
from client.errors import ERRORS_BY_STATUS, APIConnectionError, APIError, RateLimited

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
IMAGE_URL_PREFIXES = ("http://", "https://", "data:")
# Magic numbers of the formats the API decodes, to name a part sent as raw bytes.
MAGIC = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}

ImageInput = str | os.PathLike[str] | bytes


class Client:
    """Talks to one Easel API; use it as a context manager, or call ``close()``.

    ``base_url`` and ``api_key`` default to ``EASEL_API_URL`` and ``EASEL_API_KEY``.
    A 429 is retried up to ``max_retries`` times, after the server's ``Retry-After``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url or os.environ.get("EASEL_API_URL") or DEFAULT_BASE_URL
        api_key = api_key or os.environ.get("EASEL_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.max_retries = max_retries
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- the API -------------------------------------------------------------------------

    def image_to_image(
        self,
        image: ImageInput,
        prompt: str | None = None,
        *,
        app_id: str = "tiny-sd",
        inference_type: str = "a10g",
        strength: float | None = None,
        guidance: float | None = None,
        batch: int = 1,
        width: int | None = None,
        height: int | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        output_format: str | None = None,
        webhook: str | None = None,
        webhook_events_filter: list[str] | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Task:
        """Queue a job and return its ``Task`` at once; ``None`` leaves the server's default.

        ``image`` is an http(s) or data: URL (sent as it is), a local path or raw bytes
        (both uploaded as a multipart file part).
        """
        fields: dict[str, Any] = {
            "app_id": app_id,
            "inference_type": inference_type,
            "prompt": prompt,
            "strength": strength,
            "guidance_scale": guidance,
            "batch": batch,
            "width": width,
            "height": height,
            "seed": seed,
            "negative_prompt": negative_prompt,
            "output_format": output_format,
            "webhook": webhook,
            "webhook_events_filter": webhook_events_filter,
            **extra,
            "celery": True,  # the Task waits; the HTTP request never does
        }
        fields = {name: value for name, value in fields.items() if value is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if isinstance(image, str) and image.startswith(IMAGE_URL_PREFIXES):
            body = self._request(
                "POST", "/getImageToImage", json={**fields, "image": image}, headers=headers
            )
        else:
            form = {name: _form_value(value) for name, value in fields.items()}
            body = self._request(
                "POST",
                "/getImageToImage",
                data=form,
                files={"image": _file_part(image)},
                headers=headers,
            )
        return Task(self, body)

    def get(self, task_id: str) -> Task:
        """The task with this id, as it is now."""
        return Task(self, self.envelope(task_id))

    def tasks(
        self, status: str | None = None, *, limit: int | None = None, page_size: int = 20
    ) -> Iterator[Task]:
        """Your tasks, newest first, optionally of one status; follows the cursor page by page."""
        cursor: float | None = None
        yielded = 0
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if status is not None:
                params["status"] = status
            if cursor is not None:
                params["cursor"] = cursor
            page = self._request("GET", "/tasks", params=params)
            for envelope in page["tasks"]:
                if limit is not None and yielded >= limit:
                    return
                yield Task(self, envelope)
                yielded += 1
            cursor = page.get("next_cursor")
            if cursor is None:
                return

    def apps(self) -> list[dict[str, Any]]:
        """The models this deployment serves, with the GPU classes allowed to run each."""
        apps: list[dict[str, Any]] = self._request("GET", "/list_of_Apps")["output"]
        return apps

    # -- what Task calls ---------------------------------------------------------------

    def envelope(self, task_id: str, wait: float = 0) -> dict[str, Any]:
        """A task's envelope; with ``wait``, held by the server until it ends or ``wait`` s pass."""
        params = {"wait": wait} if wait else None
        # The read timeout must outlast the server's hold.
        timeout = max(self.timeout, wait + 10)
        return self._request("GET", f"/tasks/{task_id}", params=params, timeout=timeout)

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        """Ask the API to cancel a task; answers its envelope."""
        return self._request("POST", f"/tasks/{task_id}/cancel")

    def download(self, url: str) -> bytes:
        """Fetch an image URL; presigned URLs carry their own signature, so no API key."""
        request = self._http.build_request("GET", url)
        del request.headers["Authorization"]
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"cannot download {url}: {exc}") from exc
        if response.is_error:
            raise _api_error(response)
        return response.content

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send one call, retrying 429s after Retry-After; map an error status to its class."""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise APIConnectionError(f"cannot reach {self.base_url}: {exc}") from exc
            if response.status_code != 429 or attempt == self.max_retries:
                break
            self._sleep(retry_after(response) or 0.5 * 2**attempt)
        if response.is_error:
            raise _api_error(response)
        body: dict[str, Any] = response.json()
        return body


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds, from either its number or its date form."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _api_error(response: httpx.Response) -> APIError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message = body.get("error") if isinstance(body, dict) else None
    message = message or response.reason_phrase or "error"
    cls = ERRORS_BY_STATUS.get(response.status_code, APIError)
    if cls is RateLimited:
        return RateLimited(response.status_code, message, body, retry_after(response))
    return cls(response.status_code, message, body)


def _form_value(value: Any) -> str:
    """A form field as the API reads it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _file_part(image: str | os.PathLike[str] | bytes) -> tuple[str, bytes, str]:
    """A multipart file part (name, bytes, MIME type) for a local path or raw bytes."""
    if isinstance(image, bytes):
        mime = next((m for magic, m in MAGIC.items() if image.startswith(magic)), "image/png")
        return f"image.{mime.rpartition('/')[2]}", image, mime
    path = Path(image)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.name, path.read_bytes(), mime
