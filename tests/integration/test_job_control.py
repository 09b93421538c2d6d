"""Job control on the real stack: progress, queue positions, cancel, long-poll, formats, seeds."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from shared.jobs import JobStore
from shared.storage import Storage
from tests.conftest import data_uri, png_bytes
from tests.integration.test_generation import poll, submit

pytestmark = pytest.mark.integration

# Big enough to take seconds on one CPU thread: several progress writes, time to cancel.
SLOW = {"image": data_uri(png_bytes(1024, 1024)), "batch": 2, "strength": 1.0, "celery": True}


def watch(
    client: httpx.Client, task_id: str, until: Any, timeout_s: float = 90
) -> list[dict[str, Any]]:
    """Poll a task every 20 ms, keeping every envelope, until ``until(envelope)`` holds."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(client.get(f"/tasks/{task_id}").json())
        if until(seen[-1]):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"condition not met for {task_id}; last: {seen[-1]}")


def is_running(envelope: dict[str, Any]) -> bool:
    return envelope["state"] == "running" and envelope["progress"] is not None


def ended(envelope: dict[str, Any]) -> bool:
    return envelope["status"] != "PENDING"


def test_progress_rises_monotonically_to_100(client: httpx.Client) -> None:
    task_id = submit(client, inference_type="h100", **SLOW).json()["task_id"]
    seen = watch(client, task_id, ended)
    percents = [e["progress"]["percent"] for e in seen if e["progress"]]
    assert seen[-1]["status"] == "SUCCESS"
    assert len(set(percents)) >= 2, percents
    assert percents == sorted(percents)
    assert percents[-1] == 100.0
    assert seen[-1]["progress"]["step"] == seen[-1]["progress"]["total"] == 10


def test_queue_positions_count_down(client: httpx.Client) -> None:
    blocker = submit(client, inference_type="a100", **SLOW).json()["task_id"]
    watch(client, blocker, lambda e: e["state"] != "queued")
    # Each its own guidance scale: no two can share a pipeline call, so they leave one by one.
    waiting = [
        submit(client, inference_type="a100", celery=True, guidance_scale=5.0 + i).json()
        for i in range(3)
    ]
    assert [e["queue_position"] for e in waiting] == [1, 2, 3]
    seen = watch(client, waiting[-1]["task_id"], lambda e: e["state"] != "queued")
    positions = [e["queue_position"] for e in seen if e["state"] == "queued"]
    assert positions[0] == 3 and positions == sorted(positions, reverse=True)
    assert len(set(positions)) >= 2, positions
    # Once a job on the queue has finished, its queue has a run time to go by: from the
    # first queued envelope with an ETA on, every one carries one. (The GPU may admit the
    # next job while the blocker still uploads, so a position alone does not say when.)
    queued = [e for e in seen if e["state"] == "queued"]
    first = next((i for i, e in enumerate(queued) if e["eta_seconds"]), None)
    assert first is not None and all(e["eta_seconds"] for e in queued[first:]), seen
    for envelope in waiting:
        assert poll(client, envelope["task_id"])["status"] == "SUCCESS"


def test_compatible_waiting_jobs_leave_the_queue_together_in_one_call(
    client: httpx.Client, job_store: JobStore
) -> None:
    blocker = submit(client, inference_type="a100", **SLOW).json()["task_id"]
    watch(client, blocker, lambda e: e["state"] != "queued")
    waiting = [submit(client, inference_type="a100", celery=True).json() for _ in range(3)]
    assert [e["queue_position"] for e in waiting] == [1, 2, 3]  # held or not, still waiting
    for envelope in waiting:
        assert poll(client, envelope["task_id"])["status"] == "SUCCESS"
    records = [job_store.get(e["task_id"]) for e in waiting]
    assert [r.call_images for r in records] == [3, 3, 3]  # tiny-sd's max_batch is 4
    starts = [r.started_at or 0 for r in records]
    assert max(starts) - min(starts) < 0.05  # admitted together, in one transaction


def test_cancel_while_queued_never_runs(client: httpx.Client, job_store: JobStore) -> None:
    blocker = submit(client, inference_type="a100", **SLOW).json()["task_id"]
    queued = submit(client, inference_type="a100", celery=True).json()["task_id"]
    answer = client.post(f"/tasks/{queued}/cancel")
    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["state"]) == ("CANCELED", "canceled")
    assert poll(client, blocker)["status"] == "SUCCESS"
    time.sleep(0.5)  # the worker has now consumed the canceled job's message too
    record = job_store.get(queued)
    assert record.status.value == "CANCELED" and record.started_at is None and record.attempts == 0


def test_cancel_mid_run_stops_and_the_same_worker_takes_the_next_job(
    client: httpx.Client, job_store: JobStore
) -> None:
    task_id = submit(client, inference_type="h100", **SLOW).json()["task_id"]
    running = watch(client, task_id, is_running)[-1]
    answer = client.post(f"/tasks/{task_id}/cancel")
    assert answer.status_code == 200
    final = poll(client, task_id)
    assert final["status"] == "CANCELED" and final["error"] == "canceled by the client"
    assert final["output"] is None
    assert final["progress"]["step"] < final["progress"]["total"]
    assert running["progress"]["step"] >= 1
    after = submit(client, inference_type="h100").json()
    assert after["status"] == "SUCCESS"
    assert job_store.get(after["task_id"]).worker == job_store.get(task_id).worker


def test_cancel_of_a_finished_job_answers_its_final_state(client: httpx.Client) -> None:
    done = submit(client).json()
    answer = client.post(f"/tasks/{done['task_id']}/cancel")
    assert answer.status_code == 200
    assert answer.json()["status"] == "SUCCESS"
    assert answer.json()["output"]["seeds"] == done["output"]["seeds"]


def test_long_poll_answers_when_the_job_ends(client: httpx.Client) -> None:
    task_id = submit(client, celery=True).json()["task_id"]
    answer = client.get(f"/tasks/{task_id}", params={"wait": 30})
    assert answer.json()["status"] == "SUCCESS"


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
def test_long_poll_wait_is_validated(client: httpx.Client, wait: str) -> None:
    answer = client.get("/tasks/whatever", params={"wait": wait})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("wait: ")


def download(url: str) -> bytes:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    return response.content


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
)
def test_each_output_format_with_previews(client: httpx.Client, fmt: str, pil_format: str) -> None:
    envelope = submit(client, output_format=fmt, output_quality=80).json()
    assert envelope["status"] == "SUCCESS", envelope["error"]
    (url,) = envelope["output"]["images"]
    assert f"/0.{fmt}?" in url
    image = Image.open(io.BytesIO(download(url)))
    assert (image.format, image.size) == (pil_format, (256, 256))
    (small_url,) = envelope["output"]["low_res_urls"]
    small = Image.open(io.BytesIO(download(small_url)))
    assert small.format == "JPEG" and max(small.size) <= 256


def test_same_seed_gives_byte_identical_images(client: httpx.Client) -> None:
    first, again, other = (submit(client, seed=s, batch=2).json() for s in (1234, 1234, 99))
    images = [[download(u) for u in e["output"]["images"]] for e in (first, again, other)]
    assert first["output"]["seeds"] == [1234, 1235]
    assert images[0] == images[1]
    assert images[0][0] != images[0][1] and images[0][0] != images[2][0]


def test_listing_shows_own_tasks_newest_first_with_a_cursor(client: httpx.Client) -> None:
    ids = [submit(client, celery=True, ref_id=f"list-{i}").json()["task_id"] for i in range(3)]
    for task_id in ids:
        poll(client, task_id)
    page = client.get("/tasks", params={"limit": 2}).json()
    assert [t["task_id"] for t in page["tasks"]] == ids[::-1][:2]
    rest = client.get("/tasks", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [t["task_id"] for t in rest["tasks"]] == [ids[0]]
    succeeded = client.get("/tasks", params={"status": "SUCCESS", "limit": 100}).json()
    assert set(ids) <= {t["task_id"] for t in succeeded["tasks"]}
    assert all(t["status"] == "SUCCESS" for t in succeeded["tasks"])
    failed = client.get("/tasks", params={"status": "FAILED", "limit": 100}).json()
    assert not set(ids) & {t["task_id"] for t in failed["tasks"]}


def test_expired_task_says_expired_and_bucket_has_a_retention_rule(
    stack_env: dict[str, str], workers: None, storage: Storage
) -> None:
    from api import create_app
    from tests.conftest import API_KEY, settings_from

    short = create_app(settings_from(stack_env, job_ttl_s="2")).test_client()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes())}
    done = short.post("/getImageToImage", json=body, headers=headers).json
    assert done is not None and done["status"] == "SUCCESS"
    time.sleep(2.5)
    gone = short.get(f"/tasks/{done['task_id']}", headers=headers)
    assert gone.status_code == 404
    assert gone.json is not None and "expired" in gone.json["error"]
    rules = storage.client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)["Rules"]
    outputs = next(r for r in rules if r["Filter"]["Prefix"] == "outputs/")
    assert outputs["Expiration"]["Days"] == 7


def test_multipart_upload_with_the_image_as_a_file_part(client: httpx.Client) -> None:
    answer = client.post(
        "/getImageToImage",
        data={"app_id": "tiny-sd", "batch": "2", "seed": "5", "celery": "false", "prompt": "42"},
        files={"image": ("photo.png", png_bytes(320, 192), "image/png")},
    )
    envelope = answer.json()
    assert answer.status_code == 200 and envelope["status"] == "SUCCESS", envelope
    assert envelope["input"]["prompt"] == "42" and envelope["input"]["batch"] == 2
    assert envelope["output"]["seeds"] == [5, 6]
    assert (envelope["output"]["width"], envelope["output"]["height"]) == (320, 192)


def test_multipart_with_a_bad_field_is_400_naming_it(client: httpx.Client) -> None:
    answer = client.post(
        "/getImageToImage",
        data={"app_id": "tiny-sd", "batch": "many"},
        files={"image": ("photo.png", png_bytes(), "image/png")},
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("batch: ")
