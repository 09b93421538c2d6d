"""The loadtest benchmark backend through the real stack: it runs on an ordinary worker,
holds it for its steps, reports progress, and uploads small deterministic images."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from tests.conftest import data_uri, png_bytes

pytestmark = pytest.mark.integration


def run_loadtest_job(client: httpx.Client, seed: int) -> dict[str, object]:
    body = {"app_id": "loadtest", "image": data_uri(png_bytes()), "celery": False,
            "batch": 2, "seed": seed}  # fmt: skip
    response = client.post("/getImageToImage", json=body)
    assert response.status_code == 200, response.text
    envelope: dict[str, object] = response.json()
    assert envelope["status"] == "SUCCESS", envelope["error"]
    return envelope


def download(url: str) -> bytes:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    return response.content


def test_loadtest_job_holds_the_worker_for_its_steps_and_loads_no_model(
    client: httpx.Client,
) -> None:
    envelope = run_loadtest_job(client, seed=7)
    times = envelope["time_required"]
    assert isinstance(times, dict)
    assert times["load"] == 0
    assert times["inference"] >= 10 * 0.05  # default_steps x step_seconds, as registered
    assert envelope["progress"] == {"step": 10, "total": 10, "percent": 100.0}
    assert envelope["output"]["seeds"] == [7, 8]  # type: ignore[index]


def test_loadtest_images_are_uploaded_and_the_same_seed_gives_the_same_bytes(
    client: httpx.Client,
) -> None:
    first = run_loadtest_job(client, seed=7)["output"]
    again = run_loadtest_job(client, seed=7)["output"]
    assert isinstance(first, dict) and isinstance(again, dict)
    images = [download(url) for url in first["images"]]
    assert images == [download(url) for url in again["images"]]
    decoded = [Image.open(io.BytesIO(data)) for data in images]
    assert [image.size for image in decoded] == [(64, 64), (64, 64)]
    assert decoded[0].getpixel((0, 0)) != decoded[1].getpixel((0, 0))  # one image per seed
