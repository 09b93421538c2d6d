"""``AsyncClient`` against a scripted API: the same flows as ``Client``, carried out with await.

Each test drives a coroutine with ``asyncio.run``; the wait, retry and error rules themselves
are pinned once, in test_client.py, because both clients run the same code for them.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from easel_client import (
    APIConnectionError,
    AsyncClient,
    AsyncTask,
    BadRequest,
    RateLimited,
    TaskCanceled,
    TaskFailed,
    WaitTimeout,
)

from tests.client.fake_api import BASE, PNG, FakeAPI, answer, envelope, form_parts, succeeded

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def test_submit_sends_what_the_sync_client_sends() -> None:
    fields: dict[str, Any] = {
        "strength": 0.5,
        "guidance": 9,
        "idempotency_key": "abc",
        "ref_id": "r1",
    }

    async def submit() -> AsyncTask:
        async with api.async_client() as easel:
            return await easel.image_to_image("https://img.test/cat.png", "a cat", **fields)

    api, sync_api = FakeAPI(answer(envelope(queue_position=2))), FakeAPI(answer(envelope()))
    task = run(submit())
    with sync_api.client() as sync:
        sync.image_to_image("https://img.test/cat.png", "a cat", **fields)
    sent, sync_sent = api.requests[0], sync_api.requests[0]
    assert (sent.method, sent.url) == (sync_sent.method, sync_sent.url)
    assert sent.headers == sync_sent.headers and sent.content == sync_sent.content
    assert sent.headers["Authorization"] == "Bearer k" and sent.headers["Idempotency-Key"] == "abc"
    assert json.loads(sent.content)["guidance_scale"] == 9
    assert isinstance(task, AsyncTask) and (task.state, task.queue_position) == ("queued", 2)
    assert repr(task) == "<AsyncTask t1 PENDING queued>"


def test_bytes_are_uploaded_as_a_file_part() -> None:
    async def submit() -> None:
        async with api.async_client() as easel:
            await easel.image_to_image(PNG, "x", batch=2)

    api = FakeAPI(answer(envelope()))
    run(submit())
    parts = form_parts(api.requests[0])
    assert parts["image"].get_content_type() == "image/png"
    assert str(parts["batch"].get_payload()) == "2"


def test_an_error_status_raises_its_class() -> None:
    async def get() -> None:
        async with api.async_client() as easel:
            await easel.get("t1")

    api = FakeAPI(answer({"error": "strength: too big", "error_data": {"errors": []}}, 400))
    with pytest.raises(BadRequest) as raised:
        run(get())
    assert raised.value.message == "strength: too big" and raised.value.error_data == {"errors": []}


def test_429_awaits_the_injected_sleep_then_gives_up() -> None:
    async def get() -> None:
        async with api.async_client(max_retries=2) as easel:
            await easel.get("t1")

    api = FakeAPI(*[answer({"error": "slow down"}, 429, **{"Retry-After": "3"})] * 3)
    with pytest.raises(RateLimited) as raised:
        run(get())
    assert api.sleeps == [3.0, 3.0] and raised.value.retry_after == 3.0


def test_unreachable_api_raises_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def get() -> None:
        async with FakeAPI(refuse).async_client() as easel:
            await easel.get("t1")

    with pytest.raises(APIConnectionError, match=r"cannot reach http://easel\.test"):
        run(get())


def test_wait_long_polls_and_draws_the_bar() -> None:
    async def follow() -> AsyncTask:
        async with api.async_client() as easel:
            task = await easel.get("t1")
            return await task.wait(progress=out)

    api = FakeAPI(
        answer(envelope(queue_position=1)),
        answer(envelope("running", progress={"step": 3, "total": 10})),
        answer(succeeded("http://s3.test/outputs/t1/0.png")),
    )
    out = io.StringIO()
    task = run(follow())
    assert task.status == "SUCCESS" and task.urls == ["http://s3.test/outputs/t1/0.png"]
    assert [r.url.params.get("wait") for r in api.requests] == [None, "1.0", "1.0"]
    drawn = out.getvalue()
    assert "queued (position 1)" in drawn and "3/10" in drawn and "succeeded: 100%" in drawn


@pytest.mark.parametrize(("state", "error"), [("failed", TaskFailed), ("canceled", TaskCanceled)])
def test_wait_raises_when_the_job_ends_badly(state: str, error: type[Exception]) -> None:
    async def follow() -> None:
        async with api.async_client() as easel:
            await (await easel.get("t1")).wait()

    api = FakeAPI(answer(envelope()), answer(envelope(state, error="bad image")))
    with pytest.raises(error, match="bad image"):
        run(follow())


def test_wait_gives_up_after_its_timeout() -> None:
    async def follow() -> None:
        async with api.async_client() as easel:
            await (await easel.get("t1")).wait(timeout=0)

    api = FakeAPI(answer(envelope()))
    with pytest.raises(WaitTimeout):
        run(follow())


def test_cancel_refresh_and_apps() -> None:
    async def calls() -> tuple[AsyncTask, list[dict[str, Any]]]:
        async with api.async_client() as easel:
            task = await (await easel.get("t1")).cancel()
            assert task.status == "CANCELED"
            return await task.refresh(), await easel.apps()

    api = FakeAPI(
        answer(envelope()),
        answer(envelope("canceled")),
        answer(envelope("canceled", error="canceled by the client")),
        answer({"status": "SUCCESS", "output": [{"app_id": "tiny-sd"}]}),
    )
    task, apps = run(calls())
    assert task.error == "canceled by the client" and apps == [{"app_id": "tiny-sd"}]
    assert [(r.method, r.url.path) for r in api.requests] == [
        ("GET", "/tasks/t1"), ("POST", "/tasks/t1/cancel"), ("GET", "/tasks/t1"),
        ("GET", "/list_of_Apps"),
    ]  # fmt: skip


def test_tasks_is_an_async_iterator_that_follows_the_cursor() -> None:
    async def listed() -> list[str]:
        async with api.async_client() as easel:
            return [task.id async for task in easel.tasks("SUCCESS", limit=3, page_size=2)]

    api = FakeAPI(
        answer({"tasks": [envelope(task_id="a"), envelope(task_id="b")], "next_cursor": 2.5}),
        answer({"tasks": [envelope(task_id="c"), envelope(task_id="d")], "next_cursor": 1.5}),
    )
    assert run(listed()) == ["a", "b", "c"]
    assert [dict(r.url.params) for r in api.requests] == [
        {"limit": "2", "status": "SUCCESS"},
        {"limit": "2", "status": "SUCCESS", "cursor": "2.5"},
    ]


def test_images_download_without_the_api_key_into_a_folder(tmp_path: Path) -> None:
    async def download() -> list[Path]:
        async with api.async_client() as easel:
            return await (await easel.get("t1")).images(tmp_path)

    api = FakeAPI(
        answer(succeeded("http://s3.test/outputs/t1/0.webp")), httpx.Response(200, content=PNG)
    )
    paths = run(download())
    assert [p.name for p in paths] == ["t1-0.webp"] and paths[0].read_bytes() == PNG
    assert "Authorization" not in api.requests[1].headers


def test_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_API_URL", BASE)
    monkeypatch.setenv("EASEL_API_KEY", "from-env")

    async def get() -> None:
        async with AsyncClient(transport=httpx.MockTransport(api)) as easel:
            assert easel.base_url == BASE
            await easel.get("t1")

    api = FakeAPI(answer(envelope()))
    run(get())
    assert api.requests[0].headers["Authorization"] == "Bearer from-env"


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every wait must go through the injected sleep or the server's long poll."""
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"real sleep({s})"))
    yield
