"""Each NSFW policy end to end: the API, a worker per policy, the tiny checker, S3.

The module starts its own API and three workers, one per GPU class, each consuming a queue
of this module only and set to flag every image (EASEL_NSFW_THRESHOLD=-1) under its own
policy: flag on a10g, blur on a100, block on h100. The same job (same input, same seed)
goes to each, so the three answers differ only by what the policy did.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from easel.dev import stop
from easel.stack import free_port, wait_until
from shared.jobs import WorkerLiveness, connect_redis
from shared.models import InferenceType
from shared.settings import Settings
from tests.conftest import API_KEY, data_uri, settings_from, spawn
from worker.safety import blur
from worker.tiny_models import ensure_tiny_model

pytestmark = pytest.mark.integration

POLICIES = {InferenceType.A10G: "flag", InferenceType.A100: "blur", InferenceType.H100: "block"}
QUEUES = {gpu.value: f"nsfw.{policy}" for gpu, policy in POLICIES.items()}
SEED = 1234


@dataclass
class Answer:
    """One job's final envelope, and its images and previews as pixel arrays."""

    envelope: dict[str, Any]
    images: list[np.ndarray[Any, Any]]
    previews: list[np.ndarray[Any, Any]]


@pytest.fixture(scope="module")
def nsfw_api(stack_env: dict[str, str], logs_dir: Path) -> Iterator[str]:
    """This module's API and its three workers, all live, each warm with the checker."""
    env = {**stack_env, "EASEL_QUEUES": json.dumps(QUEUES)}
    settings = settings_from(env)
    for name in ("tiny-sd", "tiny-safety"):  # once, before three workers race for the lock
        ensure_tiny_model(name, settings.model_dir)
    workers = [
        spawn(
            ["worker", "--gpu", gpu.value, "--loglevel", "warning"],
            {**env, "EASEL_NSFW_THRESHOLD": "-1", "EASEL_NSFW_POLICY": policy},
            logs_dir / f"nsfw-worker-{policy}.log",
        )
        for gpu, policy in POLICIES.items()
    ]
    port = free_port()
    api = spawn(
        ["api", "--bind", f"127.0.0.1:{port}", "--workers", "1"], env, logs_dir / "nsfw-api.log"
    )
    try:
        wait_until(lambda: all_live(settings, [*workers, api]), 180, "the NSFW workers")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/ready", timeout=2).raise_for_status(), 60, "API")
        yield url
    finally:
        stop(*workers, api)


def all_live(settings: Settings, processes: list[Any]) -> None:
    """Raise until every worker announced itself (it does so only after warm-up)."""
    for process in processes:
        assert process.poll() is None, "a process exited; see its log"
    liveness = WorkerLiveness(connect_redis(settings), settings.worker_stale_after_s)
    missing = [gpu for gpu in POLICIES if not liveness.live(settings.queue_for(gpu))]
    assert not missing, f"not live yet: {missing}"


@pytest.fixture(scope="module")
def answers(nsfw_api: str) -> dict[str, Answer]:
    """The same two-image job, run to the end by each policy's worker."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((512, 512)).convert("RGB").save(buffer, format="PNG")
    body = {
        "app_id": "tiny-sd",
        "image": data_uri(buffer.getvalue()),
        "height": 512,
        "width": 512,
        "strength": 0.3,
        "batch": 2,
        "seed": SEED,
        "celery": False,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    found = {}
    with httpx.Client(base_url=nsfw_api, headers=headers, timeout=120) as client:
        for gpu, policy in POLICIES.items():
            response = client.post("/getImageToImage", json={**body, "inference_type": gpu})
            assert response.status_code == 200, response.text
            envelope = response.json()
            assert envelope["status"] == "SUCCESS", envelope.get("error")
            output = envelope["output"]
            images, previews = download(output["result"]), download(output["low_res_urls"])
            found[policy] = Answer(envelope, images, previews)
    return found


def download(urls: list[str]) -> list[np.ndarray[Any, Any]]:
    arrays = []
    for url in urls:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        arrays.append(np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")))
    return arrays


def test_every_policy_reports_each_image_flagged(answers: dict[str, Answer]) -> None:
    for policy, answer in answers.items():
        assert answer.envelope["output"]["Has_NSFW_Content"] == [True, True], policy
        assert answer.envelope["output"]["seeds"] == [SEED, SEED + 1]


def test_the_checker_was_warm_and_its_time_is_reported(answers: dict[str, Answer]) -> None:
    for policy, answer in answers.items():
        timing = answer.envelope["time_required"]
        assert timing["safety"] is not None and timing["safety"] >= 0, policy
        assert timing["load"] == 0, policy  # model and checker were loaded during warm-up


def test_flag_returns_the_generated_images_as_they_are(answers: dict[str, Answer]) -> None:
    flagged = answers["flag"]
    for image, preview in zip(flagged.images, flagged.previews, strict=True):
        assert image.shape == (512, 512, 3) and image.var() > 100  # neither black nor flat
        assert preview.var() > 100
    # Blurring the flag worker's images gives the blur worker's, pixel for pixel: the same
    # seed made the same images, and flag stored them untouched.
    for image, blurred in zip(flagged.images, answers["blur"].images, strict=True):
        again = np.asarray(blur(Image.fromarray(image)))
        assert np.array_equal(again, blurred)


def test_blur_stores_heavily_blurred_images_and_previews(answers: dict[str, Answer]) -> None:
    flagged, blurred = answers["flag"], answers["blur"]
    for original, smeared in zip(flagged.images, blurred.images, strict=True):
        assert smeared.shape == original.shape
        assert not np.array_equal(smeared, original)
        assert smeared.astype(float).var() < 0.1 * original.astype(float).var()
    for original, smeared in zip(flagged.previews, blurred.previews, strict=True):
        assert smeared.astype(float).var() < 0.1 * original.astype(float).var()


def test_block_stores_black_images_and_previews(answers: dict[str, Answer]) -> None:
    blocked = answers["block"]
    assert len(blocked.images) == len(blocked.previews) == 2
    for array in blocked.images + blocked.previews:
        assert array.size > 0 and not array.any()  # every pixel 0
    assert blocked.images[0].shape == (512, 512, 3)


def test_every_worker_stays_ready(nsfw_api: str, answers: dict[str, Answer]) -> None:
    ready = httpx.get(f"{nsfw_api}/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["workers"] == {gpu.value: 1 for gpu in InferenceType}
