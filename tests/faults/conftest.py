"""A stack of its own for fault injection: Redis (AOF) and SeaweedFS that tests may restart,
the API under gunicorn, and GPU-class workers that tests may kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from easel.stack import Server, free_port, start_redis, start_s3, wait_until
from shared.jobs import JobStore, WorkerLiveness, connect_redis, key
from shared.models import InferenceType, JobRecord
from shared.settings import Settings
from shared.storage import Storage
from tests.conftest import API_KEY, S3_ACCESS_KEY, S3_SECRET_KEY, settings_from

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class FaultStack:
    """Every process of the stack, and how to break and mend each."""

    workdir: Path
    env: dict[str, str]
    redis: Server
    s3: Server
    api_url: str
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return settings_from(self.env)

    def jobs(self) -> JobStore:
        return JobStore(connect_redis(self.settings), self.settings.job_ttl_s)

    def spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        """``python -m easel ...`` in its own process group, so a kill takes its children."""
        with open(self.logs / log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "easel", *args],
                env={**os.environ, **self.env},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_worker(self, gpu: str = "a10g") -> subprocess.Popen[bytes]:
        index = len(list(self.logs.glob("worker-*.log")))
        process = self.spawn(["worker", "--gpu", gpu, "--loglevel", "info"], f"worker-{index}.log")
        if gpu == "a10g":  # the class the fault tests load, kill and restart
            self.workers.append(process)
        else:
            self.others.append(process)
        return process

    def wait_live_workers(self, count: int, timeout_s: float = 120, gpu: str = "a10g") -> None:
        settings = self.settings
        liveness = WorkerLiveness(connect_redis(settings), settings.worker_stale_after_s)
        queue = settings.queue_for(InferenceType(gpu))

        def enough() -> None:
            assert len(liveness.live(queue)) >= count, liveness.live(queue)

        wait_until(enough, timeout_s, f"{count} live workers")

    def worker_running(self, jobs: JobStore, task_ids: list[str]) -> tuple[JobRecord, int]:
        """A job that is mid-run now, and the process group of the worker running it."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for task_id in task_ids:
                record = jobs.get(task_id)
                if record.state.value == "running" and record.worker and record.progress:
                    pid = int(record.worker.rsplit("/", 1)[1])
                    try:
                        return record, os.getpgid(pid)
                    except ProcessLookupError:
                        continue
            time.sleep(0.02)
        raise AssertionError("no job was seen mid-run")

    def worker_batching(self, jobs: JobStore, task_ids: list[str]) -> tuple[list[JobRecord], int]:
        """Jobs mid-run together in one pipeline call now, and their worker's process group."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            records = [jobs.get(task_id) for task_id in task_ids]
            for record in records:
                if record.state.value == "running" and record.progress and record.worker:
                    # A worker runs one call at a time: its running jobs are that call's.
                    partners = [
                        r for r in records
                        if r.worker == record.worker and r.state.value == "running"
                    ]  # fmt: skip
                    if (record.call_images or 0) >= 2 and len(partners) >= 2:
                        pid = int(record.worker.rsplit("/", 1)[1])
                        with contextlib.suppress(ProcessLookupError):
                            return partners, os.getpgid(pid)
            time.sleep(0.02)
        raise AssertionError("no batch of two or more jobs was seen mid-run")

    def restart_redis(self, down_s: float = 0.0) -> None:
        port = self.redis.port
        self.redis.stop()  # SIGTERM: Valkey flushes its append-only file and exits
        time.sleep(down_s)
        with open(self.logs / "redis.log", "ab") as log:
            self.redis = start_redis(self.workdir / "redis", port=port, log=log)

    def stop_s3(self) -> None:
        self.s3.stop()

    def start_s3(self) -> None:
        with open(self.logs / "s3.log", "ab") as log:
            self.s3 = start_s3(
                self.workdir / "s3", S3_ACCESS_KEY, S3_SECRET_KEY, port=self.s3.port, log=log
            )


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[FaultStack]:
    workdir = tmp_path_factory.mktemp("faults")
    (workdir / "logs").mkdir()
    with open(workdir / "logs" / "redis.log", "ab") as log:
        redis = start_redis(workdir / "redis", log=log)
    holder = [redis]
    try:
        with running_stack(workdir, state_dir, redis, {"EASEL_REDIS_URL": redis.url}) as stack:
            stack.start_worker("a100")  # a second class: after a fault, each consumes its own
            stack.wait_live_workers(1, gpu="a100")
            yield stack
            holder[0] = stack.redis  # restart_redis replaces it
    finally:
        holder[0].stop()


@contextlib.contextmanager
def running_stack(
    workdir: Path, state_dir: Path, redis: Server, redis_env: dict[str, str]
) -> Iterator[FaultStack]:
    """SeaweedFS, the API and two a10g workers on the Redis that ``redis_env`` names (the
    caller owns that Redis); everything here is stopped on the way out."""
    from worker.tiny_models import ensure_tiny_model

    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / "s3.log", "ab") as log:
        s3 = start_s3(workdir / "s3", S3_ACCESS_KEY, S3_SECRET_KEY, log=log)
    env = {
        **redis_env,
        "EASEL_S3_ENDPOINT_URL": s3.url,
        "EASEL_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "EASEL_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "EASEL_S3_BUCKET": "easel-faults",
        "EASEL_BOOTSTRAP_API_KEY": API_KEY,
        # Keys of their own: the flood run's two tenants (easel keys create).
        "EASEL_KEY_HASH_SECRET": "easel-faults-key-hash-secret-longer-than-32-chars",
        "EASEL_MODEL_DIR": str(state_dir / "models"),
        "EASEL_WARM_MODELS": '["tiny-sd"]',
        "EASEL_TORCH_THREADS": "1",
        "EASEL_WORKER_HEARTBEAT_S": "0.5",
        "EASEL_WORKER_STALE_AFTER_S": "3",
        "EASEL_MAX_ATTEMPTS": "3",
        "EASEL_S3_UPLOAD_RETRY_S": "60",
        "EASEL_LOG_JSON": "false",
    }
    for name in ("tiny-sd", "tiny-safety"):
        ensure_tiny_model(name, Path(env["EASEL_MODEL_DIR"]))
    stack: FaultStack | None = None
    try:
        wait_until(Storage(settings_from(env)).ensure_bucket, 60, "S3")
        port = free_port()
        stack = FaultStack(workdir, env, redis, s3, f"http://127.0.0.1:{port}", logs)
        stack.others.append(stack.spawn(["api", "--bind", f"127.0.0.1:{port}"], "api.log"))
        for _ in range(2):
            stack.start_worker()
        stack.wait_live_workers(2)
        wait_until(lambda: httpx.get(f"{stack.api_url}/ready", timeout=2).raise_for_status(), 60)
        yield stack
    finally:
        for process in [*stack.workers, *stack.others] if stack else []:
            stop_group(process)
        (stack.s3 if stack else s3).stop()


@dataclass
class Tally:
    """What happened to every accepted job after a fault."""

    scenario: str
    accepted: int
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    lost: int = 0
    re_executed: int = 0  # started more than once: at-least-once delivery at work
    duplicated: int = 0  # ended more than once, or more outputs than it made
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"faults[{self.scenario}]: accepted={self.accepted} succeeded={self.succeeded} "
            f"failed={self.failed} lost={self.lost} duplicated={self.duplicated} "
            f"re-executed={self.re_executed} all-terminal-after={self.seconds:.1f}s"
        )


def settle(stack: FaultStack, scenario: str, task_ids: list[str], bound_s: float) -> Tally:
    """Wait up to ``bound_s`` for every job to end, then audit records and S3."""
    jobs, storage = stack.jobs(), Storage(stack.settings)
    started = time.monotonic()
    pending = set(task_ids)
    while pending and time.monotonic() - started < bound_s:
        pending = {t for t in pending if not _terminal(jobs, t)}
        time.sleep(0.1)
    tally = Tally(scenario, len(task_ids), seconds=time.monotonic() - started)
    for task_id in task_ids:
        record = jobs.get(task_id)
        if not record.status.is_terminal:
            tally.lost += 1
            continue
        setattr(tally, _counter(record), getattr(tally, _counter(record)) + 1)
        if record.error and record.status.value == "FAILED":
            tally.errors.append(record.error)
        tally.re_executed += record.attempts > 1
        ends = int(jobs.redis.get(key("done", task_id)) or 0)
        listing = storage.client.list_objects_v2(
            Bucket=storage.bucket, Prefix=storage.output_key(task_id, "")
        )
        stored = sorted(item["Key"] for item in listing.get("Contents", []))
        expected = sorted(record.image_keys + record.preview_keys)
        tally.duplicated += ends != 1 or stored != expected
    print(tally.line())
    _record(tally)
    return tally


def _terminal(jobs: JobStore, task_id: str) -> bool:
    try:
        return jobs.get(task_id).status.is_terminal
    except Exception:  # noqa: BLE001 - Redis may be restarting; ask again
        return False


def _counter(record: JobRecord) -> str:
    return {"SUCCESS": "succeeded", "FAILED": "failed", "CANCELED": "canceled"}[record.status.value]


SETTLED: list[Tally] = []
NOTES: list[str] = []  # more lines for the summary: what a failover run timed


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The counts of every fault run, in the summary even without ``-s``."""
    if SETTLED:
        terminalreporter.section("faults: what happened to every accepted job")
        for tally in SETTLED:
            terminalreporter.line(tally.line())
        for note in NOTES:
            terminalreporter.line(note)


def _record(tally: Tally) -> None:
    SETTLED.append(tally)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "faults.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results[tally.scenario] = tally.__dict__
    path.write_text(json.dumps(results, indent=2))
