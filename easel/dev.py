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
from collections.abc import Mapping
from pathlib import Path

import httpx

from easel.stack import Server, free_port, start_redis, start_s3, wait_until
from shared.models import InferenceType

STATE = Path(".easel")
API_URL = "http://127.0.0.1:8000"


def sample_data_uri() -> str:
    """A small PNG as a data URI, for the printed curl."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((64, 64, 192, 192), fill=(240, 200, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def dev_key() -> str:
    """EASEL_BOOTSTRAP_API_KEY if set, else the key of the last run, else a new one."""
    given = os.environ.get("EASEL_BOOTSTRAP_API_KEY")
    if given:
        return given
    saved = STATE / "api-key"
    if saved.exists():
        return saved.read_text().strip()
    key = "easel_dev_" + secrets.token_urlsafe(24)
    saved.write_text(key)
    saved.chmod(0o600)
    return key


def run_dev() -> None:
    """Start everything, print how to use it, and stop everything on Ctrl-C."""
    STATE.mkdir(exist_ok=True)
    key = dev_key()
    s3_key, s3_secret = "easel", secrets.token_urlsafe(16)
    logs = STATE / "logs"
    logs.mkdir(exist_ok=True)
    servers: list[Server] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        servers.append(start_redis(STATE / "redis", log=open(logs / "redis.log", "ab")))
        servers.append(start_s3(STATE / "s3", s3_key, s3_secret, log=open(logs / "s3.log", "ab")))
        env = {
            "EASEL_REDIS_URL": servers[0].url,
            "EASEL_S3_ENDPOINT_URL": servers[1].url,
            "EASEL_S3_ACCESS_KEY_ID": s3_key,
            "EASEL_S3_SECRET_ACCESS_KEY": s3_secret,
            "EASEL_BOOTSTRAP_API_KEY": key,
            "EASEL_MODEL_DIR": str((STATE / "models").resolve()),
            "EASEL_WARM_MODELS": '["tiny-sd"]',
            "EASEL_TORCH_THREADS": "1",
        }
        write_env_file(env, key)
        os.environ.update(env)
        from shared.settings import Settings
        from shared.storage import Storage

        storage = Storage(Settings())
        wait_until(storage.ensure_bucket, 60, "S3")
        for gpu in InferenceType:
            children.append(spawn(["worker", "--gpu", gpu.value], os.environ, logs / f"worker-{gpu}.log"))
        children.append(spawn(["api", "--bind", "127.0.0.1:8000"], os.environ, logs / "api.log"))
        wait_until(lambda: _ready(key), 180, "the API and its workers")
        print_welcome(key)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup short
        print("\nstopping…", flush=True)
        for child in reversed(children):
            child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        for server in reversed(servers):
            server.stop()


def spawn(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``easel <args>`` in the background, logging to a file."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "easel", *args], env=env, stdout=out, stderr=out)


def _ready(key: str) -> None:
    response = httpx.get(f"{API_URL}/ready", timeout=2)
    response.raise_for_status()
    if not all(response.json()["workers"].values()):
        raise RuntimeError(f"workers not all warm yet: {response.json()['workers']}")


def write_env_file(env: dict[str, str], key: str) -> None:
    """``.easel/dev.env``: source it to add a worker or use the CLI from another terminal."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines += [f"export EASEL_API_URL={API_URL}", f"export EASEL_API_KEY={shlex.quote(key)}"]
    path = STATE / "dev.env"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def print_welcome(key: str) -> None:
    """The key, a curl to paste, and how to add a worker."""
    body = (
        '{"app_id": "tiny-sd", "prompt": "a beautiful painting", "batch": 2, '
        f'"celery": false, "image": "{sample_data_uri()}"}}'
    )
    print(f"""
Easel is running at {API_URL}   (logs in .easel/logs, Ctrl-C stops everything)

API key: {key}

Try it (tiny-sd's images are noise; it is a random-weight test model):

curl -s {API_URL}/getImageToImage \\
  -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
  -d '{body}'

Add a worker from another terminal:
  source .easel/dev.env && .venv/bin/easel worker --gpu h100
""", flush=True)
