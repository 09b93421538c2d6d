"""A user's request through the whole stack: API, Redis, Celery worker, tiny pipeline, S3."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from shared.jobs import JobStore
from shared.models import InferenceType
from shared.storage import Storage
from tests.conftest import data_uri, png_bytes

pytestmark = pytest.mark.integration


def submit(client: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes()), **fields}
    return client.post("/getImageToImage", json=body)


def poll(client: httpx.Client, task_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        envelope: dict[str, Any] = client.get(f"/tasks/{task_id}").json()
        if envelope["status"] != "PENDING":
            return envelope
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} still PENDING after {timeout_s} s")


def download_pngs(urls: list[str]) -> list[Image.Image]:
    images = []
    for url in urls:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
        images.append(Image.open(io.BytesIO(response.content)))
    return images


def test_async_submit_answers_200_pending_with_location_then_succeeds(client: httpx.Client) -> None:
    response = submit(client, celery=True, batch=2, ref_id="order-7")
    assert response.status_code == 200  # as Qolaba's server answers
    envelope = response.json()
    assert envelope["status"] == "PENDING"
    assert envelope["ref_id"] == "order-7"
    assert response.headers["Location"] == f"/tasks/{envelope['task_id']}"
    final = poll(client, envelope["task_id"])
    assert final["status"] == "SUCCESS", final["error"]
    assert len(final["output"]["result"]) == 2
    assert final["output"]["images"] == final["output"]["result"]  # Easel's earlier name
    assert len(set(final["output"]["seeds"])) == 2
    images = download_pngs(final["output"]["result"])
    assert [image.size for image in images] == [(256, 256), (256, 256)]
    assert final["ref_id"] == "order-7"


def test_sync_submit_answers_200_with_the_final_envelope(client: httpx.Client) -> None:
    response = submit(client, celery=False, seed=42)
    assert response.status_code == 200
    envelope = response.json()
    assert envelope["status"] == "SUCCESS", envelope["error"]
    assert envelope["output"]["seeds"] == [42]
    timing = envelope["time_required"]
    for phase in ("queue", "load", "inference", "upload", "total"):
        assert timing[phase] is not None and timing[phase] >= 0
    assert timing["load"] == 0  # tiny-sd was warmed before the worker went live


def test_omitted_fields_are_echoed_with_their_defaults(client: httpx.Client) -> None:
    envelope = submit(client, celery=True).json()
    echoed = envelope["input"]
    assert echoed["prompt"] == "a beautiful painting"
    assert echoed["guidance_scale"] == 7.5
    assert echoed["batch"] == 1
    assert echoed["strength"] == 0.7
    assert (echoed["height"], echoed["width"]) == (1024, 1024)
    assert echoed["celery"] is True
    assert echoed["inference_type"] == "a10g"
    assert echoed["negative_prompt"] is None and echoed["ref_id"] is None
    assert echoed["image"].startswith("data:image/png;base64,<")  # not the whole payload again
    poll(client, envelope["task_id"])


def test_sd_output_follows_the_fitted_input_image(client: httpx.Client) -> None:
    envelope = submit(client, image=data_uri(png_bytes(300, 200)), height=512, width=512).json()
    assert envelope["status"] == "SUCCESS", envelope["error"]
    assert (envelope["output"]["width"], envelope["output"]["height"]) == (256, 192)
    (image,) = download_pngs(envelope["output"]["images"])
    assert image.size == (256, 192)


def test_sdxl_output_uses_the_requested_width_and_height(client: httpx.Client) -> None:
    envelope = submit(client, app_id="tiny-sdxl", width=768, height=512).json()
    assert envelope["status"] == "SUCCESS", envelope["error"]
    (image,) = download_pngs(envelope["output"]["images"])
    assert image.size == (768, 512)


def test_image_url_is_fetched_by_the_worker(client: httpx.Client, storage: Storage) -> None:
    storage.put("inputs/photo.png", png_bytes(320, 256, (200, 30, 30)), "image/png")
    envelope = submit(client, image=storage.presign("inputs/photo.png")).json()
    assert envelope["status"] == "SUCCESS", envelope["error"]
    assert envelope["input"]["image"].startswith("http://")
    assert (envelope["output"]["width"], envelope["output"]["height"]) == (320, 256)


@pytest.mark.parametrize("gpu", list(InferenceType))
def test_job_runs_only_on_a_worker_of_its_gpu_class(
    client: httpx.Client, job_store: JobStore, gpu: InferenceType
) -> None:
    for _ in range(3):
        envelope = submit(client, inference_type=gpu.value).json()
        assert envelope["status"] == "SUCCESS", envelope["error"]
        record = job_store.get(envelope["task_id"])
        assert record.worker_gpu == gpu
        assert record.worker is not None and record.worker.startswith(f"{gpu.value}-")


def test_unreachable_image_url_fails_with_a_one_line_error(client: httpx.Client) -> None:
    envelope = submit(client, image="http://127.0.0.1:9/missing.png").json()
    assert envelope["status"] == "FAILED"
    assert envelope["error"].startswith("image: could not fetch the URL")
    assert "\n" not in envelope["error"]
    assert envelope["output"] is None


def test_truncated_image_fails_the_job_and_the_worker_takes_the_next(client: httpx.Client) -> None:
    broken = png_bytes(512, 512)[:200]  # a PNG header, then nothing
    envelope = submit(client, image=data_uri(broken)).json()
    assert envelope["status"] == "FAILED"
    assert envelope["error"].startswith("image:")
    assert submit(client).json()["status"] == "SUCCESS"


def test_http_error_from_the_image_host_names_the_status(
    client: httpx.Client, storage: Storage
) -> None:
    url = storage.presign("inputs/never-uploaded.png")
    envelope = submit(client, image=url).json()
    assert envelope["status"] == "FAILED"
    assert envelope["error"] == "image: the URL answered HTTP 404"


def test_qolaba_post_tasks_returns_the_same_envelope(client: httpx.Client) -> None:
    task_id = submit(client).json()["task_id"]
    by_get = client.get(f"/tasks/{task_id}").json()
    by_post = client.post("/tasks", json={"task_id": task_id}).json()
    assert by_post["task_id"] == task_id
    assert by_post["status"] == by_get["status"] == "SUCCESS"
    assert by_post["input"] == by_get["input"]


def test_unknown_task_is_404(client: httpx.Client) -> None:
    response = client.get("/tasks/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"].startswith("task_id: no task")


def test_ready_reports_redis_s3_and_live_workers(client: httpx.Client) -> None:
    body = client.get("/ready").json()
    assert body["redis"] == body["s3"] == "ok"
    assert body["workers"] == {"a10g": 1, "a100": 1, "h100": 1}


def test_list_of_apps_names_families_and_gpu_classes(client: httpx.Client) -> None:
    apps = {app["app_id"]: app for app in client.get("/list_of_Apps").json()["output"]}
    assert apps["tiny-sd"]["family"] == "sd"
    assert apps["tiny-sdxl"]["family"] == "sdxl"
    assert apps["sdxl"]["inference_types"] == ["a100", "h100"]
    assert apps["tiny-sd"]["default_steps"] == 10


def test_sync_request_past_its_wait_answers_200_pending_and_still_finishes(
    stack_env: dict[str, str], workers: None, client: httpx.Client
) -> None:
    from api import create_app
    from tests.conftest import API_KEY, settings_from

    impatient = create_app(settings_from(stack_env, sync_wait_s="0")).test_client()
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes()), "celery": False}
    response = impatient.post(
        "/getImageToImage", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200 and "Location" in response.headers
    assert response.json is not None and response.json["status"] == "PENDING"
    assert poll(client, response.json["task_id"])["status"] == "SUCCESS"
