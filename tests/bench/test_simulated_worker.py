"""``python -m bench.worker`` on the session's Redis and S3: the production worker with
simulated pipelines (bench/loader.py) serving bench/configs/simulated.toml.

It runs a ``loadtest`` job like the old benchmark backend did (holds the worker for its
time, loads nothing, reports progress, uploads small deterministic images), and a
simulated model with max_batch > 1 really shares calls between compatible jobs. The API
is the app in this process, pointed at the simulated registry and the worker's own queues.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from easel.dev import stop
from easel.stack import wait_until
from shared.jobs import WorkerLiveness, connect_redis
from shared.models import InferenceType
from shared.settings import Settings
from tests.conftest import API_KEY, data_uri, png_bytes, settings_from

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "bench" / "configs" / "simulated.toml"


@pytest.fixture(scope="module")
def sim_env(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, str]:  # fmt: skip
    """The session's servers, the simulated registry and queues no other worker consumes."""
    prefix = f"sim-{uuid.uuid4().hex[:8]}"
    calls = tmp_path_factory.mktemp("sim") / "calls.jsonl"
    return {**stack_env, "EASEL_MODEL_REGISTRY": str(REGISTRY),
            "EASEL_QUEUES": json.dumps({t.value: f"{prefix}.{t.value}" for t in InferenceType}),
            "EASEL_WARM_MODELS": '["loadtest"]', "BENCH_CALL_LOG": str(calls)}  # fmt: skip


@pytest.fixture(scope="module")
def sim_worker(sim_env: dict[str, str], logs_dir: Path) -> Iterator[Settings]:
    """One bench worker for a10g, live; its settings."""
    import subprocess
    import sys

    settings = settings_from(sim_env)
    with open(logs_dir / "bench-worker.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", "--gpu", "a10g", "--loglevel", "info"],
            env=sim_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    liveness = WorkerLiveness(connect_redis(settings), settings.worker_stale_after_s)

    def live() -> None:
        assert process.poll() is None, "the bench worker exited; see bench-worker.log"
        assert liveness.live(settings.queue_for(InferenceType.A10G)), "not live yet"

    wait_until(live, 120, "bench worker")
    yield settings
    stop(process)


@pytest.fixture
def api(sim_worker: Settings) -> FlaskClient:
    from api import create_app

    return create_app(sim_worker).test_client()


def json_of(response: TestResponse) -> dict[str, Any]:
    body = response.get_json()
    assert isinstance(body, dict), response.text
    return body


def run_job(api: FlaskClient, **fields: Any) -> dict[str, Any]:
    """A sync job of the simulated registry; its envelope, once it succeeded."""
    body = {"app_id": "loadtest", "image": data_uri(png_bytes()), "celery": False, **fields}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = api.post("/getImageToImage", json=body, headers=headers)
    assert response.status_code == 200, response.text
    envelope = json_of(response)
    assert envelope["status"] == "SUCCESS", envelope["error"]
    return envelope


def test_a_loadtest_job_holds_the_worker_for_its_time_and_loads_nothing(
    api: FlaskClient,
) -> None:
    envelope = run_job(api, batch=2, seed=7, strength=1.0)
    times = envelope["time_required"]
    assert times["load"] == 0
    assert times["inference"] >= 0.5  # t1 of sim:none?t1=0.5, as registered
    assert envelope["progress"] == {"step": 10, "total": 10, "percent": 100.0}
    assert envelope["output"]["seeds"] == [7, 8]


def test_its_images_are_uploaded_and_the_same_seed_gives_the_same_bytes(
    api: FlaskClient,
) -> None:
    first = run_job(api, batch=2, seed=7)["output"]["images"]
    again = run_job(api, batch=2, seed=7)["output"]["images"]
    images = [httpx.get(url, timeout=10).content for url in first]
    assert images == [httpx.get(url, timeout=10).content for url in again]
    decoded = [Image.open(io.BytesIO(data)) for data in images]
    assert [image.size for image in decoded] == [(64, 64), (64, 64)]
    assert decoded[0].getpixel((0, 0)) != decoded[1].getpixel((0, 0))  # one image per seed


def test_compatible_jobs_share_a_simulated_call(api: FlaskClient, sim_env: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"app_id": "sim-a100-sd15-eager", "image": data_uri(png_bytes(64, 64)), "celery": True}
    log = Path(sim_env["BENCH_CALL_LOG"])
    before = len(log.read_text().splitlines()) if log.exists() else 0
    ids = [json_of(api.post("/getImageToImage", json=body, headers=headers))["task_id"]
           for _ in range(5)]  # fmt: skip
    for task_id in ids:
        ended = json_of(api.get(f"/tasks/{task_id}?wait=30", headers=headers))
        assert ended["status"] == "SUCCESS", ended
    rows = [json.loads(line)["rows"] for line in log.read_text().splitlines()[before:]]
    assert sum(rows) == 5, rows
    assert max(rows) > 1, rows  # the first may run alone; the rest wait out its 0.4 s
