"""The real stack for benchmarks: one Redis-protocol server and one SeaweedFS, shared by the
sections, plus workers and gunicorn APIs started as ``easel worker`` / ``easel api`` start them
(the same spawning as tests/conftest.py), and simulated workers (``python -m bench.worker``)
serving bench/configs/simulated.toml."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

from easel.dev import stop
from easel.stack import Server, free_port, start_redis, start_s3, wait_until
from shared.jobs import JobStore, WorkerLiveness, connect_redis
from shared.models import InferenceType, JobRecord
from shared.registry import ModelSpec, load_registry
from shared.settings import Settings
from shared.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
# The registry of simulated pipelines: the API and bench.worker must both read it.
SIM_REGISTRY = ROOT / "bench" / "configs" / "simulated.toml"


class BenchStack:
    """Redis + S3 on free ports, a temporary state folder, and the env that points at them."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="easel-bench-"))
        self.logs = self.state / "logs"
        self.logs.mkdir()
        self.key = "bench-" + secrets.token_hex(8)
        secret = secrets.token_hex(16)
        self.redis_server: Server = start_redis(self.state / "redis")
        self.s3_server: Server = start_s3(self.state / "s3", "bench", secret)
        self.env = {
            "EASEL_REDIS_URL": self.redis_server.url,
            "EASEL_S3_ENDPOINT_URL": self.s3_server.url,
            "EASEL_S3_ACCESS_KEY_ID": "bench",
            "EASEL_S3_SECRET_ACCESS_KEY": secret,
            "EASEL_S3_BUCKET": "easel-bench",
            "EASEL_BOOTSTRAP_API_KEY": self.key,
            "EASEL_MODEL_DIR": str(self.state / "models"),
            "EASEL_WARM_MODELS": "[]",
            "EASEL_DEFAULT_RATE_LIMIT": "1000000/minute",  # measure the path, not the limits
            "EASEL_DEFAULT_MAX_INFLIGHT": "1000000",
            "HF_HUB_OFFLINE": "1",
        }
        self.settings = self.settings_with()
        wait_until(Storage(self.settings).ensure_bucket, 60, "S3")
        self.redis: redis.Redis = connect_redis(self.settings)

    def settings_with(self, **env: str) -> Settings:
        """Settings as a child process with this env (plus ``env``) would build them."""
        saved = dict(os.environ)
        try:
            os.environ.update({**self.env, **env})
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def spawn(
        self, args: list[str], log: str, module: str = "easel", **env: str
    ) -> subprocess.Popen[bytes]:
        """``python -m <module> <args>`` with the stack's env, logging to ``logs/<log>``."""
        with open(self.logs / log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env={**os.environ, **self.env, **env},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @contextmanager
    def api(self, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
        """``easel api`` with its default workers and threads; yields its URL and process."""
        port = free_port()
        process = self.spawn(["api", "--bind", f"127.0.0.1:{port}"], f"api-{port}.log", **env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: httpx.get(f"{url}/health", timeout=2).raise_for_status(), 60, "API")
            yield url, process
        finally:
            stop(process)

    def worker(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """One ``easel worker --gpu a10g`` process (concurrency 1, prefetch 1)."""
        args = ["worker", "--gpu", "a10g", "--loglevel", "warning"]
        return self.spawn(args, f"worker-{name}.log", **env)

    def sim_worker(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """One ``python -m bench.worker --gpu a10g`` process: ``easel worker``'s options, its
        pipelines simulated (bench/loader.py), serving SIM_REGISTRY. One torch thread: it
        only seeds generators, and warm-up imports it before the worker says it is live."""
        args = ["--gpu", "a10g", "--loglevel", "warning"]
        env = {**sim_env(), **self.env, "EASEL_TORCH_THREADS": "1", **env}  # a registry set wins
        return self.spawn(args, f"worker-{name}.log", module="bench.worker", **env)

    def loadtest_env(self) -> dict[str, str]:
        """Env for an API and bench workers serving SIM_REGISTRY's ``loadtest`` alone, so a
        worker holds the job slots a max_batch 1 model gets (``easel worker``'s default)."""
        spec = load_registry(SIM_REGISTRY).get("loadtest")
        path = write_registry(self.state / "registry-loadtest.toml", {"loadtest": spec})
        return {"EASEL_MODEL_REGISTRY": str(path)}

    def wait_live(self, queue: str, count: int, timeout_s: float = 180) -> None:
        """Block until ``count`` workers beat on ``queue``."""
        liveness = WorkerLiveness(self.redis, self.settings.worker_stale_after_s)

        def enough() -> None:
            live = len(liveness.live(queue))
            if live < count:
                raise RuntimeError(f"{live}/{count} workers live on {queue}")

        wait_until(enough, timeout_s, "workers")

    def close(self) -> None:
        self.redis.close()
        self.s3_server.stop()
        self.redis_server.stop()


def sim_env() -> dict[str, str]:
    """What points a process (the API, a bench worker) at the simulated registry."""
    return {"EASEL_MODEL_REGISTRY": str(SIM_REGISTRY)}


def write_registry(path: Path, specs: dict[str, ModelSpec]) -> Path:
    """A registry file of these entries, by app_id (JSON's values are valid TOML)."""
    lines = []
    for app_id, spec in specs.items():
        fields = spec.model_dump(mode="json", exclude={"app_id"}, exclude_defaults=True)
        lines += [f"[{app_id}]", *(f"{name} = {json.dumps(v)}" for name, v in fields.items()), ""]
    path.write_text("\n".join(lines))
    return path


def bench_queues(prefix: str) -> str:
    """EASEL_QUEUES pointing every GPU class at a queue no real worker consumes."""
    return json.dumps({kind.value: f"{prefix}.{kind.value}" for kind in InferenceType})


class FakeHeartbeat:
    """Announces a worker that does not exist on some queues, so the API accepts submits."""

    def __init__(self, client: redis.Redis, queues: list[str], stale_after_s: float) -> None:
        self.liveness = WorkerLiveness(client, stale_after_s)
        self.queues = queues
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> FakeHeartbeat:
        for queue in self.queues:
            self.liveness.beat(queue, "bench-no-worker")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for queue in self.queues:
            self.liveness.leave(queue, "bench-no-worker")

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            for queue in self.queues:
                self.liveness.beat(queue, "bench-no-worker")


def wait_all(store: JobStore, task_ids: list[str], timeout_s: float = 120) -> list[JobRecord]:
    """The records of these jobs once every one has ended, in order; polls every 50 ms."""
    deadline = time.monotonic() + timeout_s
    records = []
    for task_id in task_ids:  # jobs end roughly in submit order: one wait at a time
        record = store.get(task_id)
        while not record.status.is_terminal:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {task_id} still {record.status.value} after {timeout_s} s")
            time.sleep(0.05)
            record = store.get(task_id)
        records.append(record)
    return records


def sample_png(width: int, height: int) -> bytes:
    """A small real PNG with some structure."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4),
                                  fill=(240, 200, 60))  # fmt: skip
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode()
