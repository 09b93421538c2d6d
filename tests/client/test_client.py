"""``Client`` against a scripted API (tests/client/fake_api.py); ``AsyncClient``, which runs the
same flows, is pinned in test_async_client.py."""

from __future__ import annotations

import email.utils
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import easel_client
import httpx
import pytest
from easel_client import (
    APIConnectionError,
    APIError,
    BadRequest,
    Client,
    Conflict,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TaskCanceled,
    TaskFailed,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from easel_client._progress import fit_unsized_terminal
from tqdm import tqdm

from tests.client.fake_api import BASE, PNG, FakeAPI, answer, envelope, form_parts, succeeded


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (429, RateLimited),
        (503, Unavailable),
        (500, APIError),
    ],
)
def test_each_error_status_raises_its_class_with_the_envelope(
    status: int, error: type[APIError]
) -> None:
    body = {"status": "FAILED", "error": "strength: too big", "error_data": {"errors": []}}
    api = FakeAPI(answer(body, status))
    with api.client(max_retries=0) as easel, pytest.raises(error) as raised:
        easel.get("t1")
    assert type(raised.value) is error
    assert raised.value.status_code == status
    assert raised.value.message == "strength: too big"
    assert raised.value.body == body and raised.value.error_data == {"errors": []}


def test_an_error_without_json_keeps_the_text() -> None:
    api = FakeAPI(httpx.Response(502, text="bad gateway"))
    with api.client() as easel, pytest.raises(APIError) as raised:
        easel.apps()
    assert (raised.value.status_code, raised.value.body) == (502, "bad gateway")


def test_429_sleeps_for_retry_after_then_succeeds() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    api = FakeAPI(
        answer({"error": "slow down"}, 429, **{"Retry-After": "2"}),
        answer({"error": "slow down"}, 429, **{"Retry-After": later}),
        answer({"error": "slow down"}, 429),
        answer(envelope(), 200),
    )
    with api.client(max_retries=3) as easel:
        task = easel.image_to_image("https://img.test/cat.png", "a cat")
    assert task.id == "t1" and len(api.requests) == 4
    assert api.sleeps[0] == 2.0
    assert 28 < api.sleeps[1] <= 30  # the HTTP-date form
    assert api.sleeps[2] == 2.0  # no header: exponential backoff, 0.5 * 2**2


def test_429_past_max_retries_raises_rate_limited_with_the_hint() -> None:
    api = FakeAPI(*[answer({"error": "slow down"}, 429, **{"Retry-After": "3"})] * 3)
    with api.client(max_retries=2) as easel, pytest.raises(RateLimited) as raised:
        easel.get("t1")
    assert api.sleeps == [3.0, 3.0] and len(api.requests) == 3
    assert raised.value.retry_after == 3.0


def test_unreachable_api_raises_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with FakeAPI(refuse).client() as easel, pytest.raises(APIConnectionError):
        easel.get("t1")


def test_url_image_is_sent_as_json_with_only_the_given_fields() -> None:
    api = FakeAPI(answer(envelope(queue_position=2), 200))
    with api.client() as easel:
        task = easel.image_to_image(
            "https://img.test/cat.png", "a cat", strength=0.5, guidance=9, seed=3,
            idempotency_key="abc", ref_id="r1",
        )  # fmt: skip
    request = api.requests[0]
    assert request.url == f"{BASE}/getImageToImage"
    assert request.headers["Authorization"] == "Bearer k"
    assert request.headers["Idempotency-Key"] == "abc"
    assert json.loads(request.content) == {
        "image": "https://img.test/cat.png", "prompt": "a cat", "app_id": "tiny-sd",
        "inference_type": "a10g", "strength": 0.5, "guidance_scale": 9, "batch": 1, "seed": 3,
        "ref_id": "r1", "celery": True,
    }  # fmt: skip
    assert (task.status, task.state, task.queue_position) == ("PENDING", "queued", 2)


def test_local_file_is_sent_as_a_multipart_file_part(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(PNG)
    api = FakeAPI(answer(envelope(), 200))
    with api.client() as easel:
        easel.image_to_image(photo, "a fox", batch=2, width=512, output_format="webp")
    request = api.requests[0]
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    parts = form_parts(request)
    image = parts.pop("image")
    assert image.get_filename() == "photo.png" and image.get_content_type() == "image/png"
    assert image.get_payload(decode=True) == PNG
    fields = {name: str(part.get_payload()) for name, part in parts.items()}
    assert fields == {
        "app_id": "tiny-sd", "inference_type": "a10g", "prompt": "a fox", "batch": "2",
        "width": "512", "output_format": "webp", "celery": "true",
    }  # fmt: skip


def test_bytes_are_uploaded_with_their_sniffed_type() -> None:
    api = FakeAPI(answer(envelope(), 200))
    with api.client() as easel:
        easel.image_to_image(b"\xff\xd8\xff\xe0jpeg", "x")
    image = form_parts(api.requests[0])["image"]
    assert image.get_content_type() == "image/jpeg"


def test_wait_long_polls_and_draws_queue_position_then_steps() -> None:
    api = FakeAPI(
        answer(envelope(queue_position=2)),
        answer(envelope(queue_position=1)),
        answer(envelope("running", progress={"step": 3, "total": 10, "percent": 30.0})),
        answer(envelope("uploading", progress={"step": 10, "total": 10, "percent": 100.0})),
        answer(succeeded("http://s3.test/outputs/t1/0.png")),
    )
    out = io.StringIO()
    with api.client() as easel:
        task = easel.get("t1").wait(progress=out)
    assert task.status == "SUCCESS" and task.urls == ["http://s3.test/outputs/t1/0.png"]
    waits = [float(r.url.params["wait"]) for r in api.requests[1:]]
    assert waits and all(0 < w <= 10 for w in waits)
    assert all(r.url.path == "/tasks/t1" for r in api.requests)
    drawn = out.getvalue()
    assert "queued (position 2)" in drawn and "queued (position 1)" in drawn
    assert "running:  30%" in drawn and "3/10" in drawn
    assert "succeeded: 100%" in drawn and "10/10" in drawn
    assert task.progress == easel_client.Progress(10, 10) and task.progress.percent == 100.0


def test_a_terminal_that_reports_no_size_still_gets_a_bar() -> None:
    bar = tqdm(file=io.StringIO(), ncols=-1, nrows=-1)
    assert fit_unsized_terminal(bar) and (bar.ncols, bar.nrows) == (None, None)
    bar.close()


def test_wait_without_a_bar_holds_each_poll_up_to_ten_seconds() -> None:
    api = FakeAPI(answer(envelope("running")), answer(succeeded()))
    with api.client() as easel:
        easel.get("t1").wait()
    assert api.requests[1].url.params["wait"] == "10.0"


@pytest.mark.parametrize(
    ("state", "error"), [("failed", TaskFailed), ("canceled", TaskCanceled)]
)  # fmt: skip
def test_wait_raises_when_the_job_ends_badly_unless_told_not_to(
    state: str, error: type[Exception]
) -> None:
    ended = answer(envelope(state, error="bad image"))
    api = FakeAPI(answer(envelope()), ended, answer(envelope()), ended)
    with api.client() as easel:
        with pytest.raises(error, match="bad image"):
            easel.get("t1").wait()
        task = easel.get("t1").wait(raise_on_error=False)
    assert task.state == state and task.error == "bad image"


def test_wait_gives_up_after_its_timeout() -> None:
    api = FakeAPI(answer(envelope()))
    with api.client() as easel, pytest.raises(WaitTimeout):
        easel.get("t1").wait(timeout=0)


def test_cancel_posts_and_keeps_the_answer() -> None:
    api = FakeAPI(answer(envelope()), answer(envelope("canceled")))
    with api.client() as easel:
        task = easel.get("t1").cancel()
    assert api.requests[1].method == "POST" and api.requests[1].url.path == "/tasks/t1/cancel"
    assert task.status == "CANCELED"


def test_tasks_follows_the_cursor_across_pages() -> None:
    pages: list[dict[str, Any]] = [
        {"tasks": [envelope(task_id="a"), envelope(task_id="b")], "next_cursor": 2.5},
        {"tasks": [envelope(task_id="c"), envelope(task_id="d")], "next_cursor": 1.5},
        {"tasks": [envelope(task_id="e")], "next_cursor": None},
    ]
    api = FakeAPI(*[answer(page) for page in pages])
    with api.client() as easel:
        ids = [task.id for task in easel.tasks("SUCCESS", page_size=2)]
    assert ids == ["a", "b", "c", "d", "e"]
    params = [dict(r.url.params) for r in api.requests]
    assert params == [
        {"limit": "2", "status": "SUCCESS"},
        {"limit": "2", "status": "SUCCESS", "cursor": "2.5"},
        {"limit": "2", "status": "SUCCESS", "cursor": "1.5"},
    ]


def test_tasks_limit_stops_without_fetching_more_pages() -> None:
    api = FakeAPI(answer({"tasks": [envelope(task_id=i) for i in "abc"], "next_cursor": 1.0}))
    with api.client() as easel:
        assert [task.id for task in easel.tasks(limit=2)] == ["a", "b"]
    assert len(api.requests) == 1


def test_images_downloads_without_the_api_key_and_saves_into_a_folder(tmp_path: Path) -> None:
    urls = ["http://s3.test/outputs/t1/0.png", "http://s3.test/outputs/t1/1.png"]
    api = FakeAPI(
        answer(succeeded(*urls)),
        httpx.Response(200, content=PNG + b"0"),
        httpx.Response(200, content=PNG + b"1"),
        httpx.Response(200, content=PNG + b"0"),
        httpx.Response(200, content=PNG + b"1"),
    )
    with api.client() as easel:
        task = easel.get("t1")
        assert task.images() == [PNG + b"0", PNG + b"1"]
        paths = task.images(tmp_path / "out")
    assert [str(r.url) for r in api.requests[1:]] == urls * 2
    assert all("Authorization" not in r.headers for r in api.requests[1:])
    assert [p.name for p in paths] == ["t1-0.png", "t1-1.png"]
    assert paths[1].read_bytes() == PNG + b"1"


def test_images_of_a_failed_task_raise() -> None:
    api = FakeAPI(answer(envelope("failed", error="model failed")))
    with api.client() as easel, pytest.raises(TaskFailed):
        easel.get("t1").images()


def test_apps_and_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_API_URL", BASE)
    monkeypatch.setenv("EASEL_API_KEY", "from-env")
    api = FakeAPI(answer({"status": "SUCCESS", "output": [{"app_id": "tiny-sd"}]}))
    with Client(transport=httpx.MockTransport(api)) as easel:
        assert easel.apps() == [{"app_id": "tiny-sd"}]
    assert str(api.requests[0].url) == f"{BASE}/list_of_Apps"
    assert api.requests[0].headers["Authorization"] == "Bearer from-env"


def test_the_sdk_imports_nothing_from_the_server_packages() -> None:
    server = "{'api', 'worker', 'shared', 'pydantic', 'flask', 'redis', 'standardwebhooks'}"
    code = (
        "import sys, easel_client; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {server}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"


def test_a_base_url_with_a_path_keeps_it() -> None:
    api = FakeAPI(answer(envelope()))
    with Client(f"{BASE}/easel/", "k", transport=httpx.MockTransport(api)) as easel:
        easel.get("t1")
    assert str(api.requests[0].url) == f"{BASE}/easel/tasks/t1"


def test_a_long_poll_read_timeout_outlasts_the_servers_hold() -> None:
    api = FakeAPI(answer(envelope()), answer(envelope()))
    with api.client(timeout=30) as easel:
        easel.envelope("t1")
        easel.envelope("t1", wait=30)
    timeouts = [r.extensions["timeout"]["read"] for r in api.requests]
    assert timeouts == [30, 40]


def test_tasks_stops_at_the_limit_without_asking_for_the_next_page() -> None:
    api = FakeAPI(answer({"tasks": [envelope(task_id=i) for i in "ab"], "next_cursor": 1.0}))
    with api.client() as easel:
        assert [task.id for task in easel.tasks(limit=2)] == ["a", "b"]
    assert len(api.requests) == 1


def test_an_interrupted_wait_closes_its_bar() -> None:
    def interrupt(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    out = io.StringIO()
    api = FakeAPI(answer(envelope(queue_position=1)), interrupt)
    with api.client() as easel, pytest.raises(KeyboardInterrupt):
        easel.get("t1").wait(progress=out)
    assert out.getvalue().endswith("\n")  # tqdm's close() ends the bar's line


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every wait must go through the injected sleep or the server's long poll."""
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"real sleep({s})"))
    yield
