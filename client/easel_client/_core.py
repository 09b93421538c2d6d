"""The SDK's one implementation of the HTTP API, without I/O (sans-IO).

``Core`` builds each call as an ``httpx.Request`` and reads each ``httpx.Response``: the
error class of a status, the 429 retries, the JSON. Anything that needs more than one
exchange is a *flow*: a generator that yields the effects it needs (a request to send, a
``Sleep``) and is sent back each outcome (the response, or the ``httpx.TransportError``
raised instead)::

    def call(self, request):
        response = yield from self.send(request)   # a Response comes back
        ...
        yield Sleep(2.0)                           # None comes back, 2 s later

``Client`` and ``AsyncClient`` only carry the effects out, one with ``httpx.Client`` and
``time.sleep``, the other with ``httpx.AsyncClient`` and ``asyncio.sleep``, so the two can
never drift apart.
"""

from __future__ import annotations

import email.utils
import json
import mimetypes
import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from easel_client._version import __version__
from easel_client.errors import ERRORS_BY_STATUS, APIConnectionError, APIError, RateLimited

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
IMAGE_URL_PREFIXES = ("http://", "https://", "data:")
# Magic numbers of the formats the API decodes, to name a part sent as raw bytes.
MAGIC = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}

ImageInput = str | os.PathLike[str] | bytes
T = TypeVar("T")


@dataclass(frozen=True)
class Sleep:
    """An effect: pause this long before the flow goes on."""

    seconds: float


Effect = httpx.Request | Sleep
# What a transport sends back for an effect: a request's response or transport error, or
# None after a Sleep.
Outcome = httpx.Response | httpx.TransportError | None
Flow = Generator[Effect, Outcome, T]


class Core:
    """Where to reach the API and how; builds requests and reads responses."""

    def __init__(
        self, base_url: str | None, api_key: str | None, *, timeout: float, max_retries: int
    ) -> None:
        self.base_url = base_url or os.environ.get("EASEL_API_URL") or DEFAULT_BASE_URL
        # A trailing slash makes relative paths join under a base URL's own path.
        self._root = httpx.URL(self.base_url.rstrip("/") + "/")
        api_key = api_key or os.environ.get("EASEL_API_KEY")
        self.headers = {"User-Agent": f"easel-client/{__version__}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self.max_retries = max_retries

    # -- requests ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **content: Any,
    ) -> httpx.Request:
        """One API call; ``content`` is httpx's ``params``, ``json``, ``data`` or ``files``."""
        return httpx.Request(
            method,
            self._root.join(path.lstrip("/")),
            headers={**self.headers, **(headers or {})},
            # httpx's send() takes the timeout from here, not from the client.
            extensions={"timeout": httpx.Timeout(timeout or self.timeout).as_dict()},
            **content,
        )

    def submit_request(
        self, image: ImageInput, idempotency_key: str | None, **fields: Any
    ) -> httpx.Request:
        """``POST /getImageToImage``: a URL image as JSON, a path or bytes as a file part.

        A field that is ``None`` is left out, so the server's default applies.
        """
        fields = {name: value for name, value in fields.items() if value is not None}
        fields["celery"] = True  # the Task waits; the HTTP request never does
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if isinstance(image, str) and image.startswith(IMAGE_URL_PREFIXES):
            return self.request(
                "POST", "/getImageToImage", headers=headers, json={**fields, "image": image}
            )
        form = {name: _form_value(value) for name, value in fields.items()}
        return self.request(
            "POST",
            "/getImageToImage",
            headers=headers,
            data=form,
            files={"image": _file_part(image)},
        )

    def task_request(self, task_id: str, wait: float = 0) -> httpx.Request:
        """``GET /tasks/<id>``; with ``wait``, held by the server until the job ends or
        ``wait`` seconds pass."""
        params = {"wait": wait} if wait else None
        # The read timeout must outlast the server's hold.
        timeout = max(self.timeout, wait + 10)
        return self.request("GET", f"/tasks/{task_id}", params=params, timeout=timeout)

    def cancel_request(self, task_id: str) -> httpx.Request:
        """``POST /tasks/<id>/cancel``."""
        return self.request("POST", f"/tasks/{task_id}/cancel")

    def apps_request(self) -> httpx.Request:
        """``GET /list_of_Apps``."""
        return self.request("GET", "/list_of_Apps")

    # -- flows ---------------------------------------------------------------------------

    def send(self, request: httpx.Request, unreachable: str) -> Flow[httpx.Response]:
        """Send one request; no HTTP answer at all is an ``APIConnectionError``."""
        outcome = yield request
        if isinstance(outcome, httpx.Response):
            return outcome
        raise APIConnectionError(f"{unreachable}: {outcome}") from outcome

    def call(self, request: httpx.Request) -> Flow[Any]:
        """The JSON answer, after retrying 429s per Retry-After; an error status raises."""
        for attempt in range(self.max_retries + 1):
            response = yield from self.send(request, f"cannot reach {self.base_url}")
            if response.status_code != 429 or attempt == self.max_retries:
                break
            yield Sleep(retry_after(response) or 0.5 * 2**attempt)
        if response.is_error:
            raise api_error(response)
        return response.json()

    def download(self, url: str) -> Flow[bytes]:
        """An image's bytes; presigned URLs carry their own signature, so no API key."""
        request = httpx.Request(
            "GET",
            url,
            headers={"User-Agent": self.headers["User-Agent"]},
            extensions={"timeout": httpx.Timeout(self.timeout).as_dict()},
        )
        response = yield from self.send(request, f"cannot download {url}")
        if response.is_error:
            raise api_error(response)
        return response.content


class Pages:
    """``GET /tasks`` page by page: follows the cursor and stops at ``limit`` tasks."""

    def __init__(self, core: Core, status: str | None, limit: int | None, page_size: int) -> None:
        self._core = core
        self._params: dict[str, Any] = {"limit": page_size}
        if status is not None:
            self._params["status"] = status
        self._left = limit
        self._more = limit is None or limit > 0

    def next_request(self) -> httpx.Request | None:
        """The request for the next page, or None when the listing is over."""
        return self._core.request("GET", "/tasks", params=self._params) if self._more else None

    def take(self, page: dict[str, Any]) -> list[dict[str, Any]]:
        """The envelopes of a page that are wanted; notes where the next page starts."""
        envelopes: list[dict[str, Any]] = page["tasks"]
        if self._left is not None:
            envelopes = envelopes[: self._left]
            self._left -= len(envelopes)
        cursor = page.get("next_cursor")
        self._params["cursor"] = cursor
        self._more = cursor is not None and self._left != 0
        return envelopes


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


def api_error(response: httpx.Response) -> APIError:
    """The ``APIError`` subclass of an error status, holding the envelope (or the text)."""
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


def _file_part(image: ImageInput) -> tuple[str, bytes, str]:
    """A multipart file part (name, bytes, MIME type) for a local path or raw bytes."""
    if isinstance(image, bytes):
        mime = next((m for magic, m in MAGIC.items() if image.startswith(magic)), "image/png")
        return f"image.{mime.rpartition('/')[2]}", image, mime
    path = Path(image)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.name, path.read_bytes(), mime
