"""``easel dev`` (what ``make dev`` runs): the whole stack on this machine, state in ``.easel/``."""

from __future__ import annotations

import base64
import io
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from easel.stack import Server, start_redis, start_s3, wait_until
from shared.models import InferenceType

STATE = Path(".easel")
LOGS = STATE / "logs"


def run_dev(port: int = 8000) -> None:
    """Start everything, print how to use it, and stop everything on Ctrl-C."""
    LOGS.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}"
    key = os.environ.get("EASEL_BOOTSTRAP_API_KEY") or remembered_secret("api-key", "easel_dev_")
    s3_secret = remembered_secret("s3-secret")
    webhook_secret = remembered_secret("webhook-secret", "whsec_", token=webhook_token)
    key_hash_secret = remembered_secret("key-hash-secret")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with ExitStack() as stack:
        stack.callback(print, "\nstopped.", flush=True)
        redis = start_redis(
            STATE / "redis", log=stack.enter_context(open(LOGS / "redis.log", "ab"))
        )
        stack.callback(redis.stop)
        s3_log = stack.enter_context(open(LOGS / "s3.log", "ab"))
        s3 = start_s3(STATE / "s3", "easel", s3_secret, log=s3_log)
        stack.callback(s3.stop)
        env = stack_env(redis, s3, s3_secret, key, webhook_secret, key_hash_secret)
        write_env_file(env, api_url, key)
        os.environ.update(env)
        wait_until(lambda: ensure_bucket(), 60, "S3")
        # Stopped together: each Celery worker's warm shutdown takes seconds, and Ctrl-C
        # should not wait for them one after another.
        children = [
            spawn(["worker", "--gpu", gpu.value], LOGS / f"worker-{gpu}.log")
            for gpu in InferenceType
        ]
        children.append(spawn(["webhooks", "--concurrency", "4"], LOGS / "webhooks.log"))
        children.append(spawn(["api", "--bind", f"127.0.0.1:{port}"], LOGS / "api.log"))
        stack.callback(stop, *children)
        wait_until(lambda: check_ready(api_url), 300, "the API and its warm workers")
        print_welcome(api_url, key)
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
            print("\nstopping…", flush=True)


def webhook_token() -> str:
    """Standard Webhooks secrets are base64 of 24 to 64 random bytes."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def remembered_secret(
    name: str, prefix: str = "", token: Callable[[], str] = lambda: secrets.token_urlsafe(24)
) -> str:
    """A secret kept in ``.easel/<name>`` so that restarts reuse it."""
    path = STATE / name
    if not path.exists():
        path.write_text(prefix + token())
        path.chmod(0o600)
    return path.read_text().strip()


def stack_env(
    redis: Server, s3: Server, s3_secret: str, key: str, webhook_secret: str, key_hash_secret: str
) -> dict[str, str]:
    """The EASEL_* variables every process of the local stack shares."""
    return {
        "EASEL_REDIS_URL": redis.url,
        "EASEL_S3_ENDPOINT_URL": s3.url,
        "EASEL_S3_ACCESS_KEY_ID": "easel",
        "EASEL_S3_SECRET_ACCESS_KEY": s3_secret,
        "EASEL_BOOTSTRAP_API_KEY": key,
        "EASEL_MODEL_DIR": str((STATE / "models").resolve()),
        "EASEL_WARM_MODELS": '["tiny-sd"]',
        "EASEL_TORCH_THREADS": "1",  # three CPU workers share a laptop's cores
        "EASEL_WEBHOOK_SECRET": webhook_secret,
        "EASEL_KEY_HASH_SECRET": key_hash_secret,
        # Locally, images and webhook receivers live on this machine; deployments leave
        # this unset, so private addresses stay refused.
        "EASEL_IMAGE_URL_ALLOWLIST": "127.0.0.1,localhost",
        # No proxy in front locally: the client address is the socket's, whatever
        # X-Forwarded-For says.
        "EASEL_TRUSTED_PROXY_HOPS": "0",
    }


def ensure_bucket() -> None:
    from shared.settings import Settings
    from shared.storage import Storage

    Storage(Settings()).ensure_bucket()


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``easel <args>`` in the background with this environment, logging to a file."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "easel", *args], stdout=out, stderr=out)


def stop(*processes: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """Ask children to stop, all at once, then insist on those still there after grace_s."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check_ready(api_url: str) -> None:
    """Raise until the API is ready and a warm worker serves every GPU class."""
    response = httpx.get(f"{api_url}/ready", timeout=2)
    response.raise_for_status()
    workers = response.json()["workers"]
    if not all(workers.values()):
        raise RuntimeError(f"workers not all warm yet: {workers}")


def write_env_file(env: dict[str, str], api_url: str, key: str) -> None:
    """``.easel/dev.env``: source it to add a worker or use the CLI from another terminal."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines += [f"export EASEL_API_URL={api_url}", f"export EASEL_API_KEY={shlex.quote(key)}"]
    path = STATE / "dev.env"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def sample_data_uri() -> str:
    """A small PNG as a data URI, for the printed curl."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((64, 64, 192, 192), fill=(240, 200, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def print_welcome(api_url: str, key: str) -> None:
    """The key, a curl to paste, and how to add a worker."""
    body = (
        '{"app_id": "tiny-sd", "prompt": "a beautiful painting", "batch": 2, '
        f'"celery": false, "image": "{sample_data_uri()}"}}'
    )
    print(
        f"""
Easel is running at {api_url}   (logs in .easel/logs, Ctrl-C stops everything)

API key: {key}

Try it (tiny-sd's images are noise; it is a random-weight test model):

curl -s {api_url}/getImageToImage \\
  -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
  -d '{body}'

Add a worker from another terminal:
  source .easel/dev.env && .venv/bin/easel worker --gpu h100
""",
        flush=True,
    )
