"""Sync-mode latency after completion: how long after a job ends does ``celery: false`` answer?

Starts its own stack (Redis-protocol server, SeaweedFS, one worker, the API under
gunicorn), runs tiny-sd jobs one at a time, and compares the moment the client gets its
answer with the moment the worker recorded the job as finished (same host, same clock).
Run: ``python -m bench.sync_latency``.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from easel.stack import free_port, start_redis, start_s3, wait_until
from shared.jobs import JobStore, connect_redis
from shared.settings import Settings

JOBS = 20


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    key, secret = "bench-" + secrets.token_hex(8), secrets.token_hex(16)
    redis, s3 = start_redis(state / "redis"), start_s3(state / "s3", "bench", secret)
    port = free_port()
    env = {
        **os.environ,
        "EASEL_REDIS_URL": redis.url, "EASEL_S3_ENDPOINT_URL": s3.url,
        "EASEL_S3_ACCESS_KEY_ID": "bench", "EASEL_S3_SECRET_ACCESS_KEY": secret,
        "EASEL_BOOTSTRAP_API_KEY": key, "EASEL_MODEL_DIR": str(state / "models"),
        "EASEL_WARM_MODELS": '["tiny-sd"]', "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    run = [sys.executable, "-m", "easel"]
    children = [
        subprocess.Popen([*run, "worker", "--gpu", "a10g", "--loglevel", "warning"], env=env),
        subprocess.Popen([*run, "api", "--bind", f"127.0.0.1:{port}"], env=env,
                         stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        os.environ.update({k: v for k, v in env.items() if k.startswith("EASEL_")})
        store = JobStore(connect_redis(Settings()), 3600)
        body = {"app_id": "tiny-sd", "image": _image_uri(), "celery": False}
        headers = {"Authorization": f"Bearer {key}"}
        wait_until(lambda: httpx.post(f"{url}/getImageToImage", json=body, headers=headers,
                                      timeout=60).raise_for_status(), 180, "stack")  # fmt: skip
        after_finish, end_to_end = [], []
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for _ in range(JOBS):
                sent = time.time()
                envelope = client.post("/getImageToImage", json=body).json()
                received = time.time()
                record = store.get(envelope["task_id"])
                assert record.finished_at is not None and envelope["status"] == "SUCCESS"
                after_finish.append((received - record.finished_at) * 1000)
                end_to_end.append((received - sent) * 1000)
        print(f"sync answer after the worker recorded completion, {JOBS} jobs, tiny-sd 256x256:")
        print(f"  median {statistics.median(after_finish):.1f} ms, max {max(after_finish):.1f} ms")
        print(f"  end to end median {statistics.median(end_to_end):.0f} ms")
        print(
            "  (Celery's AsyncResult.get() polls every 500 ms: 250 ms on average after completion)"
        )
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=30)
        s3.stop()
        redis.stop()


def _image_uri() -> str:
    from easel.dev import sample_data_uri

    return sample_data_uri()


if __name__ == "__main__":
    main()
