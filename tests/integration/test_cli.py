"""The command line a user types: `easel dev` serves its printed curl; submit, status, cancel."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from easel_client import Client
from PIL import Image

from easel.stack import free_port
from tests.conftest import API_KEY, data_uri, png_bytes
from tests.integration.test_sdk import start_blocker

pytestmark = pytest.mark.integration


def test_submit_waits_and_prints_image_urls(
    api_url: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(192, 128))
    result = subprocess.run(
        [sys.executable, "-m", "easel", "submit", str(photo), "--prompt", "a fox", "--batch", "2",
         "--wait", "--base-url", api_url, "--api-key", API_KEY],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    urls = result.stdout.split()
    assert len(urls) == 2
    for url in urls:
        image = Image.open(io.BytesIO(httpx.get(url, timeout=10).content))
        assert image.size == (192, 128)


def test_submit_with_a_bad_key_exits_nonzero(api_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "easel", "submit", str(photo), "--base-url", api_url,
         "--api-key", "wrong"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "Authorization: unknown API key"


def easel(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``easel`` command line as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "easel", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_submit_out_draws_a_progress_bar_and_saves_the_images(api_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(192, 128))
    results = tmp_path / "results"
    result = easel(
        "submit", str(photo), "--prompt", "a fox", "--batch", "2", "--strength", "1",
        "--out", str(results), "--base-url", api_url, "--api-key", API_KEY,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    task_id = re.search(r"^task (\S+)$", result.stderr, re.M)
    assert task_id, result.stderr
    assert "succeeded: 100%" in result.stderr and "10/10" in result.stderr, result.stderr
    saved = sorted(results.iterdir())
    assert [p.name for p in saved] == [f"{task_id.group(1)}-0.png", f"{task_id.group(1)}-1.png"]
    assert all(Image.open(io.BytesIO(p.read_bytes())).size == (192, 128) for p in saved)
    assert len(result.stdout.split()) == 2  # the image URLs


def test_status_and_cancel_print_the_envelope(api_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(64, 64))
    connection = ("--base-url", api_url, "--api-key", API_KEY)
    with Client(api_url, API_KEY) as sdk:
        blocker = start_blocker(sdk)
        submitted = easel("submit", str(photo), "--inference-type", "a100", *connection)
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.strip()
        canceled = easel("cancel", task_id, *connection)
        status = easel("status", task_id, *connection)
        blocker.cancel()
    assert canceled.returncode == 0, canceled.stderr
    assert json.loads(canceled.stdout)["status"] == "CANCELED"
    assert status.returncode == 0, status.stderr
    envelope = json.loads(status.stdout)
    assert (envelope["task_id"], envelope["state"]) == (task_id, "canceled")
    unknown = easel("status", "no-such-task", *connection)
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["error"].startswith("task_id:")


def test_waiting_on_a_job_that_fails_exits_nonzero(api_url: str) -> None:
    connection = ("--base-url", api_url, "--api-key", API_KEY)
    broken = data_uri(png_bytes(512, 512)[:200])  # a PNG header, then nothing: the worker fails
    result = easel("submit", broken, "--wait", *connection)
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "FAILED"
    assert "ended FAILED: image:" in result.stderr


def test_easel_dev_serves_its_printed_curl_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
    dev = subprocess.Popen(
        [sys.executable, "-m", "easel", "dev", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        printed = read_until(dev, "Add a worker", timeout_s=240)
        curl = re.search(r"^curl .*?\}'$", printed, re.S | re.M)
        assert curl, printed
        answer = subprocess.run(
            ["bash", "-c", curl.group(0)], capture_output=True, text=True, timeout=120, check=True
        )
        envelope = json.loads(answer.stdout)
        assert envelope["status"] == "SUCCESS", envelope
        assert len(envelope["output"]["images"]) == 2
        for url in envelope["output"]["images"]:
            body = httpx.get(url, timeout=10).content
            assert body.startswith(b"\x89PNG") and Image.open(io.BytesIO(body)).size == (256, 256)
        assert "EASEL_API_KEY=" in (tmp_path / ".easel" / "dev.env").read_text()
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=90)
        assert dev.stdout is not None
        dev.stdout.close()
    assert dev.returncode == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def read_until(process: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """Collect a child's output until ``marker`` appears."""
    assert process.stdout is not None
    deadline, seen = time.monotonic() + timeout_s, ""
    while marker not in seen:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"easel dev exited early:\n{seen}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} within {timeout_s} s:\n{seen}")
        seen += line
    return seen
