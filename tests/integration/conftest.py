"""The real stack: Celery worker processes for each GPU class and the API under gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from easel.dev import stop
from easel.stack import free_port, wait_until
from shared.jobs import JobStore, connect_redis
from shared.models import InferenceType
from shared.settings import Settings
from shared.storage import Storage
from tests.conftest import API_KEY

ROOT = Path(__file__).resolve().parents[2]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run ``python -m easel ...`` as a child process with its own log file."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "easel", *args],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="session")
def logs_dir(state_dir: Path) -> Path:
    path = state_dir / "logs"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def workers(stack_env: dict[str, str], stack_settings: Settings, logs_dir: Path) -> Iterator[None]:
    """One real Celery worker process per GPU class, each on its own queue, warm."""
    # Generate the tiny models once, before three workers race for the lock.
    from worker.tiny_models import ensure_tiny_model

    for name in ("tiny-sd", "tiny-sdxl"):
        ensure_tiny_model(name, stack_settings.model_dir)
    processes = [
        spawn(
            ["worker", "--gpu", gpu.value, "--loglevel", "warning"],
            stack_env,
            logs_dir / f"worker-{gpu}.log",
        )
        for gpu in InferenceType
    ]
    processes.append(
        spawn(["webhooks", "--concurrency", "8", "--loglevel", "info"], stack_env,
              logs_dir / "webhooks.log")
    )  # fmt: skip
    store = connect_redis(stack_settings)
    from shared.jobs import WorkerLiveness

    liveness = WorkerLiveness(store, stack_settings.worker_stale_after_s)

    def all_live() -> None:
        for process in processes:
            assert process.poll() is None, "a worker exited; see its log"
        missing = [gpu for gpu in InferenceType if not liveness.live(stack_settings.queue_for(gpu))]
        assert not missing, f"not live yet: {missing}"

    wait_until(all_live, 120, "workers")
    yield
    for process in processes:
        stop(process)


@pytest.fixture(scope="session")
def api_url(stack_env: dict[str, str], workers: None, logs_dir: Path) -> Iterator[str]:
    """The API under gunicorn, as ``easel api`` runs it."""
    port = free_port()
    process = spawn(
        ["api", "--bind", f"127.0.0.1:{port}", "--workers", "2"], stack_env, logs_dir / "api.log"
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/ready", timeout=2).raise_for_status(), 60, "API")
    yield url
    stop(process)


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=90
    ) as http:
        yield http


@pytest.fixture(scope="session")
def job_store(stack_settings: Settings) -> JobStore:
    """Direct access to job records, to check what only the server side sees."""
    return JobStore(connect_redis(stack_settings), stack_settings.job_ttl_s)


@pytest.fixture(scope="session")
def storage(stack_settings: Settings) -> Storage:
    return Storage(stack_settings)
