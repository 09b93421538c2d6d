"""The SDK as a user installs it: its wheel, built from client/, in a fresh virtualenv with
nothing of the server's, driving the real stack (sdk_user_script.py is what runs there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.conftest import API_KEY, WEBHOOK_SECRET, data_uri, png_bytes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("sdk_user_script.py")
LOCAL_BUILDS = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
SERVER_ONLY = {"celery", "redis", "boto3", "pydantic", "flask", "standardwebhooks", "torch"}


@dataclass(frozen=True)
class SdkVenv:
    wheel: Path
    python: Path


def run(*args: str | Path, cwd: Path, timeout: float = 300) -> str:
    """Run a command as a user would, outside the repository, without our venv's variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> SdkVenv:
    """``pip wheel ./client``, then ``python -m venv`` and ``pip install`` of that wheel."""
    home = tmp_path_factory.mktemp("sdk-wheel")
    # A copy, so the build leaves nothing in the checkout and no earlier build leaks in.
    source = shutil.copytree(ROOT / "client", home / "client", ignore=LOCAL_BUILDS)
    pip = [sys.executable, "-m", "pip", "--quiet"]
    run(*pip, "wheel", source, "--no-deps", "--wheel-dir", home / "dist", cwd=home)
    (wheel,) = (home / "dist").glob("easel_client-*.whl")
    run(sys.executable, "-m", "venv", home / "venv", cwd=home)
    python = home / "venv" / "bin" / "python"
    run(python, "-m", "pip", "--quiet", "install", wheel, cwd=home)
    return SdkVenv(wheel, python)


def test_the_wheel_holds_only_the_typed_sdk(sdk_venv: SdkVenv) -> None:
    names = zipfile.ZipFile(sdk_venv.wheel).namelist()
    packages = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert packages == {"easel_client"}
    assert "easel_client/py.typed" in names


def test_installing_it_brings_httpx_and_tqdm_and_nothing_of_the_server(sdk_venv: SdkVenv) -> None:
    code = (
        "import importlib.metadata as m, json; print(json.dumps("
        "[sorted(d.metadata['Name'].lower() for d in m.distributions()),"
        " m.requires('easel-client')]))"
    )
    installed, requires = json.loads(
        run(sdk_venv.python, "-I", "-c", code, cwd=sdk_venv.wheel.parent)
    )
    assert {"easel-client", "httpx", "tqdm"} <= set(installed)
    assert not SERVER_ONLY & set(installed), installed
    assert sorted(r.split(">")[0].split("<")[0] for r in requires) == ["httpx", "tqdm"]


def signed_payload() -> dict[str, Any]:
    """A delivery signed here, with the reference library the server uses."""
    body = json.dumps({"type": "task.completed", "timestamp": "t", "data": {"task_id": "t-signed"}})
    now = datetime.fromtimestamp(time.time(), tz=UTC)
    headers = {
        "webhook-id": "msg_wheel",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(WEBHOOK_SECRET).sign("msg_wheel", now, body),
    }
    return {"body": body, "headers": headers}


def test_the_installed_sdk_runs_jobs_sync_and_async_cancels_and_verifies_webhooks(
    sdk_venv: SdkVenv, api_url: str, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(
        json.dumps({
            "api_url": api_url, "api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET,
            "image": data_uri(png_bytes(512, 512)), "signed": signed_payload(),
        })
    )  # fmt: skip
    report = json.loads(run(sdk_venv.python, "-I", SCRIPT, inputs, cwd=tmp_path, timeout=240))

    # 0. It ran the wheel's SDK, not the repository's.
    assert report["sdk_file"].startswith(str(sdk_venv.python.parents[1])), report["sdk_file"]
    # 1. Sync: a job end to end, the bar counting to the last step, the image downloaded.
    sync = report["sync"]
    assert "tiny-sd" in sync["apps"]
    assert sync["status"] == "SUCCESS" and sync["seeds"] == [5]
    assert "succeeded: 100%" in sync["bar"] and "10/10" in sync["bar"], sync["bar"]
    assert sync["sizes"] == [[512, 512]]
    # 2. Async: the same, with AsyncClient.
    done = report["async"]
    assert done["status"] == "SUCCESS" and done["sizes"] == [[512, 512]]
    assert "succeeded: 100%" in done["bar"], done["bar"]
    # 3. A queued job canceled: CANCELED at once, and wait() raises TaskCanceled.
    assert done["cancel"] == {"state_before": "queued", "answered": "CANCELED", "ended": "CANCELED"}
    # 4. Webhooks: a payload signed here verifies, a tampered one does not, and so does the
    # server's real completed delivery of the sync job.
    hooks = report["webhooks"]
    assert hooks["signed"]["data"]["task_id"] == "t-signed" and hooks["tampered"] == "rejected"
    (delivered,) = hooks["delivered"]
    assert delivered["type"] == "task.completed"
    assert (delivered["data"]["task_id"], delivered["data"]["status"]) == (sync["id"], "SUCCESS")
