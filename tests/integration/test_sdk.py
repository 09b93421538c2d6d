"""The Python SDK against the real stack: upload, progress bar, download, cancel, errors, the
long poll and the async client. test_sdk_wheel.py runs it again as a user installs it."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from easel_client import AsyncClient, BadRequest, Client, NotFound, Task, TaskCanceled, Unauthorized
from PIL import Image

from tests.conftest import API_KEY, data_uri, png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def easel(api_url: str) -> Iterator[Client]:
    with Client(api_url, API_KEY, timeout=30) as sdk:
        yield sdk


def start_blocker(easel: Client, inference_type: str = "a100") -> Task:
    """A job slow enough on one CPU thread that the next one on its queue waits; returned
    once it runs (a small job submitted while its large input is still being decoded
    would reach the GPU thread first)."""
    task = easel.image_to_image(
        png_bytes(1024, 1024), "slow", inference_type=inference_type, batch=2, strength=1.0
    )
    deadline = time.monotonic() + 60
    while task.refresh().state != "running":
        assert time.monotonic() < deadline, task.envelope
        time.sleep(0.05)
    return task


def test_local_file_uploads_and_the_bar_counts_steps_to_the_total(
    easel: Client, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(192, 128))
    task = easel.image_to_image(photo, "a fox", batch=2, seed=11, strength=1.0)
    assert task.status == "PENDING" and task.state in ("queued", "running")
    bar = io.StringIO()
    assert task.wait(timeout=90, progress=bar) is task
    assert (task.status, task.state) == ("SUCCESS", "succeeded")
    assert task.progress is not None and task.progress.step == task.progress.total == 10
    drawn = bar.getvalue()
    assert "succeeded: 100%" in drawn and "10/10" in drawn, drawn
    assert task.seeds == [11, 12]
    images = task.images()
    assert len(images) == 2 and all(body.startswith(b"\x89PNG") for body in images)
    assert all(Image.open(io.BytesIO(body)).size == (192, 128) for body in images)


def test_data_uri_is_sent_as_a_url_and_images_save_into_a_folder(
    easel: Client, tmp_path: Path
) -> None:
    image = data_uri(png_bytes(128, 128, color=(200, 40, 40)))
    task = easel.image_to_image(image, "a red square", output_format="webp", ref_id="r-7")
    paths = task.images(tmp_path / "results")  # waits for the job first
    assert task.status == "SUCCESS" and task.envelope["ref_id"] == "r-7"
    assert [p.name for p in paths] == [f"{task.id}-0.webp"]
    with Image.open(paths[0]) as saved:
        assert (saved.format, saved.size) == ("WEBP", (128, 128))


def test_cancel_a_queued_job_and_wait_reports_it(easel: Client) -> None:
    blocker = start_blocker(easel)
    queued = easel.image_to_image(png_bytes(64, 64), "never", inference_type="a100")
    assert queued.state == "queued" and queued.queue_position is not None
    assert queued.cancel() is queued
    assert (queued.status, queued.state) == ("CANCELED", "canceled")
    with pytest.raises(TaskCanceled) as raised:
        easel.get(queued.id).wait(timeout=10)
    assert raised.value.task.error == "canceled by the client"
    assert easel.get(queued.id).refresh().progress is None  # it never ran
    blocker.cancel().wait(timeout=60, raise_on_error=False)  # free the queue for others


def test_listing_pages_through_your_tasks_newest_first(easel: Client) -> None:
    ids = [easel.image_to_image(png_bytes(64, 64), "list").wait().id for _ in range(3)]
    listed = [task.id for task in easel.tasks("SUCCESS", limit=3, page_size=1)]
    assert listed == ids[::-1]


def test_apps_lists_the_tiny_models(easel: Client) -> None:
    assert {"tiny-sd", "tiny-sdxl"} <= {app["app_id"] for app in easel.apps()}


def test_a_bad_key_is_unauthorized(api_url: str) -> None:
    with Client(api_url, "wrong-key") as stranger, pytest.raises(Unauthorized) as raised:
        stranger.image_to_image(png_bytes(64, 64), "x")
    assert raised.value.status_code == 401 and "API key" in raised.value.message


def test_an_unknown_task_is_not_found(easel: Client) -> None:
    with pytest.raises(NotFound) as raised:
        easel.get("no-such-task")
    assert raised.value.body["status"] == "FAILED"


def test_a_bad_strength_is_a_bad_request_naming_the_field(easel: Client) -> None:
    with pytest.raises(BadRequest) as raised:
        easel.image_to_image(png_bytes(64, 64), "x", strength=1.5)
    assert raised.value.message.startswith("strength:")
    assert [e["field"] for e in raised.value.error_data["errors"]] == ["strength"]


def test_wait_is_long_polls_that_answer_when_the_job_ends(api_url: str) -> None:
    polls: list[str] = []

    class Recording(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if "wait" in request.url.params:
                polls.append(request.url.params["wait"])
            return super().handle_request(request)

    with Client(api_url, API_KEY, transport=Recording()) as easel:
        task = easel.image_to_image(png_bytes(64, 64), "at once")
        started = time.monotonic()
        task.wait(timeout=90)
        waited = time.monotonic() - started
    assert task.status == "SUCCESS"
    # Each poll is held up to 10 s and answered when the job ends, so a few polls at most:
    # polling without ?wait= would need one every second or so.
    assert polls and set(polls) == {"10.0"}
    assert len(polls) <= 1 + waited / 9, (polls, waited)


def test_the_async_client_runs_jobs_side_by_side(api_url: str, tmp_path: Path) -> None:
    async def two_jobs() -> list[list[Path]]:
        async with AsyncClient(api_url, API_KEY) as easel:
            tasks = await asyncio.gather(
                *(easel.image_to_image(png_bytes(128, 64), "side by side", seed=s) for s in (1, 2))
            )
            await asyncio.gather(*(task.wait(timeout=90) for task in tasks))
            assert [task.seeds for task in tasks] == [[1], [2]]
            return [await task.images(tmp_path) for task in tasks]

    saved = asyncio.run(two_jobs())
    assert [len(paths) for paths in saved] == [1, 1]
    for paths in saved:
        with Image.open(paths[0]) as image:
            assert image.size == (128, 64)
