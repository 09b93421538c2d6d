"""A Qolaba customer's calling code, run unchanged against the live stack.

The client below is written from Qolaba's published material (the seed page, its task
status docs, and its server's ``APIInput``, ``TaskStatus`` and ``create_task`` shapes),
not from Easel's: it posts to either spelling of the path, authenticates with either
header, names the image ``image`` or ``file_url``, checks for HTTP 200, polls with
``POST /tasks {task_id, ref_id}`` or ``POST /getImage {id, refID}``, and reads
``output.result``, ``output.Has_NSFW_Content``, ``time_required.startup_time`` /
``runtime`` and ``app_id``. Only the base URL and the key are Easel's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, png_bytes, serve

pytestmark = pytest.mark.integration

PNG = png_bytes(512, 512, (200, 90, 30))


class Photo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def photo_url() -> Iterator[str]:
    with serve(Photo) as url:
        yield f"{url}/photo.png"


OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


class QolabaStyleClient:
    """What a Qolaba customer's code does, with Easel's base URL and key."""

    def __init__(self, base_url: str, api_key: str, header: str = "Authorization") -> None:
        auth = f"Bearer {api_key}" if header == "Authorization" else api_key
        self.http = httpx.Client(base_url=base_url, headers={header: auth}, timeout=90)
        OPEN.append(self.http)

    def image_to_image(self, path: str, image_field: str, image: str, **extra: Any) -> Any:
        body = {
            "app_id": "tiny-sd", image_field: image, "prompt": "a beautiful painting",
            "guidance_scale": 7.5, "batch": 2, "strength": 0.5, "height": 512, "width": 512,
            "celery": True, "inference_type": "a10g", "ref_id": "", **extra,
        }  # fmt: skip
        response = self.http.post(path, json=body)
        assert response.status_code == 200, response.text  # Qolaba's clients check for 200
        return response.json()

    def status(self, task_id: str, docs_spelling: bool = False) -> Any:
        if docs_spelling:
            response = self.http.post("/getImage", json={"id": task_id, "refID": ""})
        else:
            response = self.http.post("/tasks", json={"task_id": task_id, "ref_id": ""})
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, task_id: str, docs_spelling: bool = False) -> Any:
        deadline = time.monotonic() + 120
        while True:
            answer = self.status(task_id, docs_spelling)
            if answer["status"] != "PENDING" or time.monotonic() > deadline:
                return answer
            time.sleep(0.5)


@pytest.mark.parametrize(
    ("path", "header", "image_field", "docs_spelling"),
    [
        ("/getImageToImage", "Authorization", "image", False),
        ("/getImagetoImage", "X-API-Key", "file_url", True),
        ("/getImageToImage", "X-API-Key", "image", True),
        ("/getImagetoImage", "Authorization", "file_url", False),
    ],
)
def test_a_qolaba_client_submits_polls_and_reads_its_answer(
    api_url: str, photo_url: str, path: str, header: str, image_field: str, docs_spelling: bool
) -> None:
    client = QolabaStyleClient(api_url, API_KEY, header)
    accepted = client.image_to_image(path, image_field, photo_url)
    assert accepted["status"] == "PENDING" and accepted["app_id"] == "tiny-sd"
    done = client.wait(accepted["task_id"], docs_spelling)
    assert done["status"] == "SUCCESS", done["error"]
    assert done["app_id"] == "tiny-sd" and done["task_id"] == accepted["task_id"]
    output = done["output"]
    assert len(output["result"]) == 2
    for url in output["result"]:
        image = httpx.get(url, timeout=30)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert len(output["Has_NSFW_Content"]) == 2
    assert all(isinstance(flag, bool) for flag in output["Has_NSFW_Content"])
    timing = done["time_required"]
    assert timing["startup_time"] >= 0 and timing["runtime"] > 0
    assert timing["startup_time"] + timing["runtime"] == pytest.approx(timing["total"], abs=1e-3)


def test_a_sync_qolaba_call_answers_the_finished_job(api_url: str, photo_url: str) -> None:
    client = QolabaStyleClient(api_url, API_KEY)
    done = client.image_to_image("/getImageToImage", "file_url", photo_url, celery=False)
    assert done["status"] == "SUCCESS" and len(done["output"]["result"]) == 2


def test_qolaba_s_two_extra_switches_are_accepted_off_and_refused_on(
    api_url: str, photo_url: str
) -> None:
    client = QolabaStyleClient(api_url, API_KEY)
    off = client.image_to_image(
        "/getImageToImage", "image", photo_url, upscale=False, check_copyright_content=False
    )
    assert off["status"] == "PENDING"
    for field in ("upscale", "check_copyright_content"):
        body = {"app_id": "tiny-sd", "image": photo_url, "celery": True, field: True}
        refused = client.http.post("/getImageToImage", json=body)
        assert refused.status_code == 400
        assert refused.json()["error"].startswith(f"{field}: ")
        assert "does not" in refused.json()["error"]


def test_image_and_file_url_together_are_a_400_naming_both(api_url: str, photo_url: str) -> None:
    client = QolabaStyleClient(api_url, API_KEY)
    body = {"app_id": "tiny-sd", "image": photo_url, "file_url": photo_url, "celery": True}
    refused = client.http.post("/getImageToImage", json=body)
    assert refused.status_code == 400
    message = refused.json()["error"]
    assert "image" in message and "file_url" in message


def test_a_qolaba_client_lists_the_apps(api_url: str) -> None:
    client = QolabaStyleClient(api_url, API_KEY)
    answer = client.http.get("/list_of_Apps")
    assert answer.status_code == 200
    envelope = answer.json()
    assert envelope["status"] == "SUCCESS"
    assert {"tiny-sd", "tiny-sdxl"} <= {app["app_id"] for app in envelope["output"]}


def test_a_generated_client_s_multipart_booleans_are_read(api_url: str) -> None:
    """openapi-python-client sends every non-file form field as a text/plain part holding
    ``str(value)``: ``True``/``False`` for booleans."""
    parts = [
        ("app_id", (None, b"tiny-sd", "text/plain")),
        ("celery", (None, str(True).encode(), "text/plain")),
        ("upscale", (None, str(False).encode(), "text/plain")),
        ("batch", (None, str(1).encode(), "text/plain")),
        ("image", ("photo.png", PNG, "image/png")),
    ]
    answer = httpx.post(
        f"{api_url}/getImageToImage",
        files=parts,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["input"]["celery"] is True and answer.json()["status"] == "PENDING"
