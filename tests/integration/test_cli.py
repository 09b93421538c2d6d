"""The command line a user types: `easel dev` serves its printed curl; `easel submit --wait`."""

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
from PIL import Image

from easel.stack import free_port
from tests.conftest import API_KEY, png_bytes

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
