"""``Client`` and ``Task``: the API over ``httpx.Client``, blocking.

The calls themselves are in ``_core`` and ``_task``; this module only carries out their
effects (see ``Client._run``), as ``_async`` does with ``await``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar, overload

import httpx

from easel_client import _task
from easel_client._core import Core, Effect, Flow, ImageInput, Outcome, Pages, Sleep
from easel_client._task import BaseTask

T = TypeVar("T")


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
        self._core = Core(base_url, api_key, timeout=timeout, max_retries=max_retries)
        self._sleep = sleep
        self._http = httpx.Client(timeout=timeout, transport=transport)

    @property
    def base_url(self) -> str:
        """The API this client talks to."""
        return self._core.base_url

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
        request = self._core.submit_request(
            image, idempotency_key, prompt=prompt, app_id=app_id, inference_type=inference_type,
            strength=strength, guidance_scale=guidance, batch=batch, width=width, height=height,
            seed=seed, negative_prompt=negative_prompt, output_format=output_format,
            webhook=webhook, webhook_events_filter=webhook_events_filter, **extra,
        )  # fmt: skip
        return Task(self, self._run(self._core.call(request)))

    def get(self, task_id: str) -> Task:
        """The task with this id, as it is now."""
        return Task(self, self.envelope(task_id))

    def tasks(
        self, status: str | None = None, *, limit: int | None = None, page_size: int = 20
    ) -> Iterator[Task]:
        """Your tasks, newest first, optionally of one status; follows the cursor page by page."""
        pages = Pages(self._core, status, limit, page_size)
        while (request := pages.next_request()) is not None:
            for envelope in pages.take(self._run(self._core.call(request))):
                yield Task(self, envelope)

    def apps(self) -> list[dict[str, Any]]:
        """The models this deployment serves, with the GPU classes allowed to run each."""
        body = self._run(self._core.call(self._core.apps_request()))
        apps: list[dict[str, Any]] = body["output"]
        return apps

    # -- what Task calls ---------------------------------------------------------------

    def envelope(self, task_id: str, wait: float = 0) -> dict[str, Any]:
        """A task's envelope; with ``wait``, held by the server until it ends or ``wait`` s pass."""
        request = self._core.task_request(task_id, wait)
        envelope: dict[str, Any] = self._run(self._core.call(request))
        return envelope

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        """Ask the API to cancel a task; answers its envelope."""
        request = self._core.cancel_request(task_id)
        envelope: dict[str, Any] = self._run(self._core.call(request))
        return envelope

    def download(self, url: str) -> bytes:
        """Fetch an image URL; presigned URLs carry their own signature, so no API key."""
        return self._run(self._core.download(url))

    def _run(self, flow: Flow[T]) -> T:
        """Carry out a flow's effects one by one, and answer what it returns."""
        with closing(flow):  # an interrupt mid-flow still runs its cleanup (the bar)
            outcome: Outcome = None
            while True:
                try:
                    effect = flow.send(outcome)
                except StopIteration as done:
                    result: T = done.value
                    return result
                outcome = self._carry_out(effect)

    def _carry_out(self, effect: Effect) -> Outcome:
        if isinstance(effect, Sleep):
            self._sleep(effect.seconds)
            return None
        try:
            return self._http.send(effect)
        except httpx.TransportError as exc:
            return exc  # the flow decides what it means


class Task(BaseTask):
    """A job on the server; attributes read its latest envelope (``refresh()`` renews it)."""

    def __init__(self, client: Client, envelope: dict[str, Any]) -> None:
        super().__init__(envelope)
        self._client = client

    def refresh(self) -> Task:
        """Read the envelope again (image URLs come back freshly signed)."""
        self.envelope = self._client.envelope(self.id)
        return self

    def cancel(self) -> Task:
        """Cancel the job: a queued one never runs, a running one stops at its next step."""
        self.envelope = self._client.cancel_task(self.id)
        return self

    def wait(
        self,
        timeout: float | None = None,
        progress: bool | TextIO = False,
        *,
        raise_on_error: bool = True,
    ) -> Task:
        """Long-poll until the job ends; ``progress`` draws a bar (``True``: on stderr).

        Raises ``TaskFailed`` or ``TaskCanceled`` when it ends badly, unless
        ``raise_on_error`` is false, and ``WaitTimeout`` after ``timeout`` seconds.
        """
        client = self._client
        client._run(_task.wait(client._core, self, timeout, progress, raise_on_error))
        return self

    @overload
    def images(self, dest_dir: None = None) -> list[bytes]: ...
    @overload
    def images(self, dest_dir: str | Path) -> list[Path]: ...
    def images(self, dest_dir: str | Path | None = None) -> list[bytes] | list[Path]:
        """Download the images, waiting for the job first; saved into ``dest_dir`` when given."""
        return self._client._run(_task.images(self._client._core, self, dest_dir))
