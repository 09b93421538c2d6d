"""Real servers for the whole session: a Redis-protocol server and SeaweedFS S3, on free ports;
and, for the tests that ask for them, Celery workers for each GPU class and the API under
gunicorn (tests/integration/ and tests/compat/ both drive that stack)."""

from __future__ import annotations

import base64
import io
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import httpx
import pytest
from PIL import Image

from easel.dev import stop
from easel.stack import Server, free_port, start_redis, start_s3, wait_until
from shared.jobs import JobStore, connect_redis
from shared.models import GenerationParams, InferenceType, JobRecord
from shared.netguard import GuardedHttp, UrlPolicy
from shared.settings import Settings
from shared.storage import Storage

# Nothing in the suite may reach the Hugging Face Hub; child processes inherit this.
os.environ["HF_HUB_OFFLINE"] = "1"

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"easel-test-webhook-secret-32byte").decode()
API_KEY = "test-key-" + secrets.token_hex(8)
S3_ACCESS_KEY = "easel-test"
S3_SECRET_KEY = secrets.token_hex(16)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("easel-state")


@pytest.fixture(scope="session")
def redis_server(state_dir: Path) -> Iterator[Server]:
    server = start_redis(state_dir / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(state_dir: Path) -> Iterator[Server]:
    server = start_s3(state_dir / "s3", S3_ACCESS_KEY, S3_SECRET_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack_env(redis_server: Server, s3_server: Server, state_dir: Path) -> dict[str, str]:
    """The EASEL_* variables that point every process at the session's servers."""
    env = {
        "EASEL_REDIS_URL": redis_server.url,
        "EASEL_S3_ENDPOINT_URL": s3_server.url,
        "EASEL_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "EASEL_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "EASEL_S3_BUCKET": "easel-test",
        "EASEL_BOOTSTRAP_API_KEY": API_KEY,
        "EASEL_MODEL_DIR": str(state_dir / "models"),
        "EASEL_WARM_MODELS": '["tiny-sd"]',
        "EASEL_TORCH_THREADS": "1",
        "EASEL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "EASEL_KEY_HASH_SECRET": "easel-test-key-hash-secret-longer-than-32-chars",
        # Test images and webhook receivers are served on loopback.
        "EASEL_IMAGE_URL_ALLOWLIST": "127.0.0.1",
        # Tests poll fast and share the bootstrap key: the limits are tested with keys of
        # their own (tests/api/test_keys_and_limits.py, tests/integration/test_tenants.py).
        "EASEL_DEFAULT_RATE_LIMIT": "100000/minute",
        # Tests send bad keys from 127.0.0.1 on purpose; the limit on failed logins is
        # tested with addresses and limits of its own (tests/api/test_auth.py).
        "EASEL_AUTH_FAILURE_LIMIT": "100000/minute",
        "EASEL_DEFAULT_MAX_INFLIGHT": "10000",
    }
    storage = Storage(settings_from(env))
    wait_until(storage.ensure_bucket, 60, "S3")
    return env


def settings_from(env: dict[str, str], **overrides: str) -> Settings:
    """Settings built exactly as a process with this environment would build them."""
    extra = {f"EASEL_{name.upper()}": value for name, value in overrides.items()}
    with mock.patch.dict(os.environ, {**env, **extra}, clear=True):
        return Settings()


@pytest.fixture(scope="session")
def stack_settings(stack_env: dict[str, str]) -> Settings:
    return settings_from(stack_env)


def png_bytes(
    width: int = 256, height: int = 256, color: tuple[int, int, int] = (30, 120, 200)
) -> bytes:
    """A small real PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def job_record(
    task_id: str, owner: str = "o", batch: int = 1, seed: int | None = None
) -> JobRecord:
    """A queued tiny-sd job record, as the API would store it."""
    params = GenerationParams(
        app_id="tiny-sd", prompt="p", guidance_scale=7.5, batch=batch, strength=0.7,
        height=512, width=512, seed=seed,
    )  # fmt: skip
    return JobRecord(
        task_id=task_id, owner=owner, app_id="tiny-sd", inference_type=InferenceType.A10G,
        queue="q", params=params, input={}, created_at=time.time(),
    )  # fmt: skip


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on loopback, in a thread, for one test module or test."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def loopback_http() -> Iterator[GuardedHttp]:
    """The SSRF-guarded client with loopback allowed, as the test stack configures it."""
    guarded = GuardedHttp(UrlPolicy(["127.0.0.1"]))
    yield guarded
    guarded.close()


@contextmanager
def seemingly_served(settings: Settings, queues: list[str]) -> Iterator[None]:
    """A worker that seems live on ``queues`` (a heartbeat and no worker), so submits are
    accepted and their jobs stay queued."""
    from shared.jobs import WorkerLiveness, connect_redis

    liveness = WorkerLiveness(connect_redis(settings), settings.worker_stale_after_s)
    stopping = threading.Event()

    def beat() -> None:
        while not stopping.is_set():
            for queue in queues:
                liveness.beat(queue, "test-no-worker")
            stopping.wait(1.0)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        yield
    finally:
        stopping.set()
        beater.join()
        for queue in queues:
            liveness.leave(queue, "test-no-worker")


# --- the real stack: workers and the API (started only when a test asks) ---------------

ROOT = Path(__file__).resolve().parents[1]


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

    for name in ("tiny-sd", "tiny-sdxl", "tiny-safety"):
        ensure_tiny_model(name, stack_settings.model_dir)
    processes = [
        spawn(
            ["worker", "--gpu", gpu.value, "--loglevel", "info"],  # the log test reads INFO
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
