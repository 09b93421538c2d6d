"""``AsyncClient`` and ``AsyncTask``: the API over ``httpx.AsyncClient``, for asyncio.

The same calls as ``Client`` and ``Task``, from the same flows in ``_core`` and ``_task``;
this module only carries out their effects with ``await`` (see ``AsyncClient._run``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar, overload

import httpx

from easel_client import _task
from easel_client._core import Core, Effect, Flow, ImageInput, Outcome, Pages, Sleep
from easel_client._task import BaseTask

T = TypeVar("T")


class AsyncClient:
    """Talks to one Easel API; use it as ``async with``, or await ``aclose()``.

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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._core = Core(base_url, api_key, timeout=timeout, max_retries=max_retries)
        self._sleep = sleep
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    @property
    def base_url(self) -> str:
        """The API this client talks to."""
        return self._core.base_url

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- the API -------------------------------------------------------------------------

    async def image_to_image(
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
    ) -> AsyncTask:
        """Queue a job and return its ``AsyncTask`` at once; ``None`` leaves the server's default.

        ``image`` is an http(s) or data: URL (sent as it is), a local path or raw bytes
        (both uploaded as a multipart file part).
        """
        request = self._core.submit_request(
            image, idempotency_key, prompt=prompt, app_id=app_id, inference_type=inference_type,
            strength=strength, guidance_scale=guidance, batch=batch, width=width, height=height,
            seed=seed, negative_prompt=negative_prompt, output_format=output_format,
            webhook=webhook, webhook_events_filter=webhook_events_filter, **extra,
        )  # fmt: skip
        return AsyncTask(self, await self._run(self._core.call(request)))

    async def get(self, task_id: str) -> AsyncTask:
        """The task with this id, as it is now."""
        return AsyncTask(self, await self.envelope(task_id))

    async def tasks(
        self, status: str | None = None, *, limit: int | None = None, page_size: int = 20
    ) -> AsyncIterator[AsyncTask]:
        """Your tasks, newest first, optionally of one status; follows the cursor page by page."""
        pages = Pages(self._core, status, limit, page_size)
        while (request := pages.next_request()) is not None:
            for envelope in pages.take(await self._run(self._core.call(request))):
                yield AsyncTask(self, envelope)

    async def apps(self) -> list[dict[str, Any]]:
        """The models this deployment serves, with the GPU classes allowed to run each."""
        body = await self._run(self._core.call(self._core.apps_request()))
        apps: list[dict[str, Any]] = body["output"]
        return apps

    # -- what AsyncTask calls ----------------------------------------------------------

    async def envelope(self, task_id: str, wait: float = 0) -> dict[str, Any]:
        """A task's envelope; with ``wait``, held by the server until it ends or ``wait`` s pass."""
        request = self._core.task_request(task_id, wait)
        envelope: dict[str, Any] = await self._run(self._core.call(request))
        return envelope

    async def cancel_task(self, task_id: str) -> dict[str, Any]:
        """Ask the API to cancel a task; answers its envelope."""
        request = self._core.cancel_request(task_id)
        envelope: dict[str, Any] = await self._run(self._core.call(request))
        return envelope

    async def download(self, url: str) -> bytes:
        """Fetch an image URL; presigned URLs carry their own signature, so no API key."""
        return await self._run(self._core.download(url))

    async def _run(self, flow: Flow[T]) -> T:
        """Carry out a flow's effects one by one, and answer what it returns."""
        with closing(flow):  # an interrupt mid-flow still runs its cleanup (the bar)
            outcome: Outcome = None
            while True:
                try:
                    effect = flow.send(outcome)
                except StopIteration as done:
                    result: T = done.value
                    return result
                outcome = await self._carry_out(effect)

    async def _carry_out(self, effect: Effect) -> Outcome:
        if isinstance(effect, Sleep):
            await self._sleep(effect.seconds)
            return None
        try:
            return await self._http.send(effect)
        except httpx.TransportError as exc:
            return exc  # the flow decides what it means


class AsyncTask(BaseTask):
    """A job on the server; attributes read its latest envelope (``refresh()`` renews it)."""

    def __init__(self, client: AsyncClient, envelope: dict[str, Any]) -> None:
        super().__init__(envelope)
        self._client = client

    async def refresh(self) -> AsyncTask:
        """Read the envelope again (image URLs come back freshly signed)."""
        self.envelope = await self._client.envelope(self.id)
        return self

    async def cancel(self) -> AsyncTask:
        """Cancel the job: a queued one never runs, a running one stops at its next step."""
        self.envelope = await self._client.cancel_task(self.id)
        return self

    async def wait(
        self,
        timeout: float | None = None,
        progress: bool | TextIO = False,
        *,
        raise_on_error: bool = True,
    ) -> AsyncTask:
        """Long-poll until the job ends; ``progress`` draws a bar (``True``: on stderr).

        Raises ``TaskFailed`` or ``TaskCanceled`` when it ends badly, unless
        ``raise_on_error`` is false, and ``WaitTimeout`` after ``timeout`` seconds.
        """
        client = self._client
        await client._run(_task.wait(client._core, self, timeout, progress, raise_on_error))
        return self

    @overload
    async def images(self, dest_dir: None = None) -> list[bytes]: ...
    @overload
    async def images(self, dest_dir: str | Path) -> list[Path]: ...
    async def images(self, dest_dir: str | Path | None = None) -> list[bytes] | list[Path]:
        """Download the images, waiting for the job first; saved into ``dest_dir`` when given."""
        return await self._client._run(_task.images(self._client._core, self, dest_dir))
