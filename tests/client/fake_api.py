"""A scripted Easel API for the SDK's tests: httpx.MockTransport stands in for the network,
for ``Client`` and ``AsyncClient`` alike."""

from __future__ import annotations

from collections.abc import Callable
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
from easel_client import AsyncClient, Client

BASE = "http://easel.test"
PNG = b"\x89PNG\r\n\x1a\nfake"
Handler = Callable[[httpx.Request], httpx.Response]


class FakeAPI:
    """Answers each request with the next scripted response, and keeps the requests."""

    def __init__(self, *responses: httpx.Response | Handler) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0)
        return answer if isinstance(answer, httpx.Response) else answer(request)

    def client(self, **kwargs: Any) -> Client:
        return Client(
            BASE, "k", transport=httpx.MockTransport(self), sleep=self.sleeps.append, **kwargs
        )

    def async_client(self, **kwargs: Any) -> AsyncClient:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        return AsyncClient(BASE, "k", transport=httpx.MockTransport(self), sleep=sleep, **kwargs)


def envelope(state: str = "queued", **fields: Any) -> dict[str, Any]:
    status = {"succeeded": "SUCCESS", "failed": "FAILED", "canceled": "CANCELED"}
    return {"task_id": "t1", "status": status.get(state, "PENDING"), "state": state, **fields}


def answer(body: dict[str, Any], status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def succeeded(*urls: str) -> dict[str, Any]:
    output = {"result": list(urls), "low_res_urls": [], "seeds": [7], "width": 64, "height": 64}
    return envelope("succeeded", output=output, progress={"step": 10, "total": 10})


def form_parts(request: httpx.Request) -> dict[str, Message]:
    """A multipart body, by part name."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.read())
    parts = message.iter_parts()
    return {str(part.get_param("name", header="content-disposition")): part for part in parts}
