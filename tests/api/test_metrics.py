"""``GET /metrics`` on the API: request counters by route, queue depth, jobs queued and canceled.

The Flask test client runs without ``PROMETHEUS_MULTIPROC_DIR``, so these read this
process's default registry; the integration suite checks the multiprocess sums under
gunicorn. Counters are shared by every app in the process, so each test reads deltas.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from shared.jobs import JobStore, WorkerLiveness, connect_redis, key
from shared.metrics import BACKLOG_KEYS
from shared.models import InferenceType
from shared.settings import Settings
from tests.conftest import data_uri, job_record, png_bytes

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: FlaskClient) -> Samples:
    """Every sample /metrics serves, by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_the_tests_run_without_a_multiprocess_directory() -> None:
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_metrics_needs_no_key_and_counts_requests_by_route_not_path(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    before = scrape(client)
    assert client.get("/health").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/tasks/no-such-task-1", headers=auth).status_code == 404
    assert client.get("/tasks/no-such-task-2", headers=auth).status_code == 404
    assert client.get("/no/such/route").status_code == 404
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    health = {"method": "GET", "endpoint": "/health"}
    assert delta("easel_http_requests_total", status="200", **health) == 2
    assert delta("easel_http_request_seconds_count", **health) == 2
    assert delta("easel_http_request_seconds_bucket", le="+Inf", **health) == 2
    task = {"method": "GET", "endpoint": "/tasks/<task_id>", "status": "404"}
    assert delta("easel_http_requests_total", **task) == 2
    assert delta("easel_http_requests_total", method="GET", endpoint="<unmatched>", status="404")
    assert not any("no-such-task" in str(labels) for _, labels in after)


def test_queue_depth_is_read_from_the_queued_set_of_each_gpu_class(
    client: FlaskClient, settings: Settings
) -> None:
    redis = connect_redis(settings)
    queued = key("queued", settings.queue_for(InferenceType.A100))
    redis.zadd(queued, {"job-a": 1.0, "job-b": 2.0, "job-c": 3.0})
    try:
        samples = scrape(client)
    finally:
        redis.delete(queued)
    assert value(samples, "easel_queue_depth", inference_type="a100") == 3
    assert value(samples, "easel_queue_depth", inference_type="h100") == 0
    assert {labels for name, labels in samples if name == "easel_queue_depth"} == {
        frozenset({("inference_type", kind.value)}) for kind in InferenceType
    }


def test_backlog_per_key_is_labelled_by_key_id_and_bounded(
    client: FlaskClient, settings: Settings
) -> None:
    redis = connect_redis(settings)
    jobs = JobStore(redis, settings.job_ttl_s)
    queue = settings.queue_for(InferenceType.A100)
    sizes = {f"key{n:02d}": n + 1 for n in range(BACKLOG_KEYS + 3)}  # 3 keys too many
    for owner, size in sizes.items():
        for _ in range(size):
            record = job_record(str(uuid.uuid4()), owner=owner)
            jobs.create(record.model_copy(update={"queue": queue}), weight=1)
    try:
        samples = scrape(client)
    finally:
        while (task_id := jobs.pop(queue, "metrics-test")) is not None:
            jobs.unclaim(queue, task_id, ended=True)
        redis.delete(key("queued", queue))
    shown = {
        dict(labels)["key"]: value(samples, "easel_queue_backlog", **dict(labels))
        for name, labels in samples
        if name == "easel_queue_backlog" and dict(labels)["inference_type"] == "a100"
    }
    largest = sorted(sizes, key=lambda owner: -sizes[owner])[:BACKLOG_KEYS]
    assert shown == {**{o: sizes[o] for o in largest}, "other": 1 + 2 + 3}


@pytest.fixture
def live_a10g(settings: Settings) -> Iterator[str]:
    """A heartbeat on the a10g test queue, so a submit gets past the live-worker check; the
    queue, its Celery list and the heartbeat are gone afterwards."""
    redis = connect_redis(settings)
    queue = settings.queue_for(InferenceType.A10G)
    WorkerLiveness(redis, settings.worker_stale_after_s).beat(queue, "metrics-test-worker")
    yield queue
    redis.delete(key("workers", queue), key("queued", queue), queue, f"_kombu.binding.{queue}")


def test_a_submit_counts_queued_and_a_cancel_while_queued_counts_canceled(
    client: FlaskClient, auth: dict[str, str], live_a10g: str
) -> None:
    labels = {"app_id": "tiny-sd", "inference_type": "a10g"}
    before = scrape(client)
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True}
    submitted = client.post("/getImageToImage", json=body, headers=auth)
    assert submitted.status_code == 200, submitted.get_json()
    middle = scrape(client)
    task_id = submitted.get_json()["task_id"]
    assert client.post(f"/tasks/{task_id}/cancel", headers=auth).status_code == 200
    after = scrape(client)

    def jobs(samples: Samples, state: str) -> float:
        return value(samples, "easel_jobs_total", state=state, **labels)

    assert jobs(middle, "queued") - jobs(before, "queued") == 1
    assert jobs(after, "canceled") - jobs(middle, "canceled") == 1
    assert jobs(after, "queued") == jobs(middle, "queued")


def test_a_submit_refused_before_queuing_counts_nothing(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    before = scrape(client)
    body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "inference_type": "h100"}
    assert client.post("/getImageToImage", json=body, headers=auth).status_code == 503
    after = scrape(client)
    queued = {"state": "queued", "app_id": "tiny-sd", "inference_type": "h100"}
    assert value(after, "easel_jobs_total", **queued) == value(before, "easel_jobs_total", **queued)
