"""Schemathesis against a live API under gunicorn, from its own ``/openapi.json``.

The fuzzed API is a separate process: its GPU classes map to queues no worker consumes,
and this module beats for a make-believe worker on them, so valid submissions are
accepted and queued without ever running. It has its own key, so its jobs stay out of
the other tests' listings; afterwards its queues and jobs are deleted from Redis.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.auth import owner_id
from api.openapi import document
from easel.dev import stop
from easel.stack import free_port, wait_until
from shared.jobs import WorkerLiveness, connect_redis, key
from shared.models import InferenceType
from shared.settings import Settings
from tests.conftest import data_uri, png_bytes, settings_from, spawn

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(4)
FUZZ_KEY = f"fuzz-key-{secrets.token_hex(8)}"
APP_IDS = ["tiny-sd", "tiny-sdxl"]
IMAGE = png_bytes(64, 64)
FUZZ_QUEUES = {gpu.value: f"fuzz-{TOKEN}.{gpu.value}" for gpu in InferenceType}


@schemathesis.check
def errors_are_the_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx answer is the JSON envelope: status FAILED and a non-empty error."""
    if response.status_code < 400:
        return None
    body = json.loads(response.content)
    assert isinstance(body, dict), f"{response.status_code}: the body is not a JSON object"
    assert body.get("status") == "FAILED", f"{response.status_code}: status is not FAILED"
    assert body.get("error"), f"{response.status_code}: error is empty"
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    errors_are_the_envelope,
]


def beat_until(stop_event: threading.Event, fuzz_settings: Settings) -> None:
    """Keep a make-believe worker live on every fuzz queue."""
    liveness = WorkerLiveness(connect_redis(fuzz_settings), fuzz_settings.worker_stale_after_s)
    while True:
        for queue in FUZZ_QUEUES.values():
            liveness.beat(queue, f"fuzz-{TOKEN}@nowhere")
        if stop_event.wait(1.0):
            return


def forget_fuzz_state(client: redis.Redis) -> None:
    """Delete the fuzz queues (Celery's lists and bindings, Easel's indexes) and its jobs."""
    doomed = list(client.scan_iter(match=f"*fuzz-{TOKEN}.*"))
    owner = key("owner", owner_id(FUZZ_KEY))
    for task_id in client.zrange(owner, 0, -1):
        name = task_id.decode()
        doomed += [key(kind, name) for kind in ("job", "tomb", "input", "done", "cancel")]
    if doomed:
        client.delete(*doomed, owner)


@pytest.fixture(scope="module")
def fuzz_api(stack_env: dict[str, str], logs_dir: Path) -> Iterator[str]:
    """A second API process whose queues lead nowhere, with a worker that seems live."""
    env = {
        **stack_env,
        "EASEL_QUEUES": json.dumps(FUZZ_QUEUES),
        "EASEL_BOOTSTRAP_API_KEY": FUZZ_KEY,
        "EASEL_SYNC_WAIT_S": "0",  # celery: false answers 202 at once instead of waiting
        # Hundreds of requests a minute, and jobs that never end: lift the key's limits so
        # the fuzz explores validation rather than the limiter (tested on its own).
        "EASEL_DEFAULT_RATE_LIMIT": "100000/minute",
        "EASEL_DEFAULT_MAX_INFLIGHT": "100000",
    }
    fuzz_settings = settings_from(env)
    stop_event = threading.Event()
    beater = threading.Thread(target=beat_until, args=(stop_event, fuzz_settings), daemon=True)
    beater.start()
    port = free_port()
    process = spawn(
        ["api", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env, logs_dir / "api-fuzz.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/ready", timeout=2).raise_for_status(), 60, "API")
        yield url
    finally:
        stop(process)
        stop_event.set()
        beater.join(timeout=5)
        forget_fuzz_state(connect_redis(fuzz_settings))


def steer(case: Any, app_id: str | None, real_image: bool) -> Any:
    """Give some submissions a real image and a registered model, which random strings
    never are, so the fuzz also reaches admission and the 202 answer."""
    if real_image and isinstance(case.body, dict):
        multipart = case.media_type == "multipart/form-data"
        case.body["image"] = IMAGE if multipart else data_uri(IMAGE)
        if app_id is not None:
            case.body["app_id"] = app_id
    return case


@pytest.fixture(scope="module")
def live_schema(fuzz_api: str) -> Any:
    """The document as the live API serves it."""
    return schemathesis.openapi.from_url(f"{fuzz_api}/openapi.json", timeout=10)


OPERATIONS = [
    f"{method.upper()} {path}" for path, item in document()["paths"].items() for method in item
]


@pytest.mark.parametrize("label", OPERATIONS)
def test_api_honours_its_own_document(live_schema: Any, fuzz_api: str, label: str) -> None:
    operation = live_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the live document"
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    if label == "POST /getImageToImage":
        positive = st.builds(steer, positive, st.sampled_from([None, *APP_IDS]), st.booleans())
    cases = st.one_of(positive, operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(
        max_examples=30,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: keep the run short
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def call(case: Any) -> None:
        case.call_and_validate(
            base_url=fuzz_api,
            headers={"Authorization": f"Bearer {FUZZ_KEY}"},
            checks=CHECKS,
            timeout=30,
        )

    call()
