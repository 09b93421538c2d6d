"""Nothing secret reaches the logs: no prompt, image URL, webhook URL or presigned URL.

Jobs go through the session's API with one marker, a fresh uuid, in the prompt, in the path
of the image URL (a loopback image server) and in the path of the webhook URL (a loopback
receiver): one succeeds, one fails (its image answers 404), one runs synchronously. Their
webhooks are delivered, one after a 500, and one progress delivery is given up. Then every
log file of the session (the API, the three GPU workers, the webhook deliverer and whatever
else wrote under ``logs_dir``) is searched for the marker and for ``X-Amz-Signature``, which
every presigned URL carries (the outputs and the completed payloads hold several).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, png_bytes, serve
from tests.integration.test_generation import poll, submit

pytestmark = pytest.mark.integration

MARKER = uuid.uuid4().hex
PRESIGNED = "X-Amz-Signature"
PHOTO = png_bytes(256, 256)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Receiver:
    """Records each delivery as (path, event type). ``/<marker>/flaky`` answers 500 to the
    first ``completed``; ``/<marker>/refuse`` answers 500 to everything."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def handle(self, path: str, body: bytes) -> int:
        kind = json.loads(body)["type"]
        with self.lock:
            first = (path, kind) not in self.seen
            self.seen.append((path, kind))
        if path.endswith("/refuse") or (path.endswith("/flaky") and first):
            return 500
        return 204

    def count(self, path: str, kind: str) -> int:
        with self.lock:
            return self.seen.count((path, kind))


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[str, Receiver]]:
    """A loopback server for images and webhooks alike, with the marker in every path."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == f"/{MARKER}/photo.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PHOTO) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(PHOTO)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(receiver.handle(self.path, body))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    with serve(Handler) as origin:
        yield f"{origin}/{MARKER}", receiver


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.1)


def log_text(logs_dir: Path) -> dict[Path, str]:
    """Every file under the session's log folder, as text."""
    return {p: p.read_text(errors="replace") for p in sorted(logs_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def jobs(api_url: str, origins: tuple[str, Receiver], logs_dir: Path) -> list[str]:
    """The three jobs, run to the end, with every webhook delivered or given up."""
    with httpx.Client(base_url=api_url, headers=AUTH, timeout=90) as client:
        return run_jobs(client, origins, logs_dir)


def run_jobs(client: httpx.Client, origins: tuple[str, Receiver], logs_dir: Path) -> list[str]:
    """Submit the three jobs and wait for each to end and for its webhooks."""
    base, receiver = origins
    prompt = {"prompt": f"a lighthouse at dusk, {MARKER}", "negative_prompt": MARKER}
    done = submit(
        client, image=f"{base}/photo.png", webhook=f"{base}/hook", celery=True, **prompt
    ).json()["task_id"]
    failed = submit(
        client, image=f"{base}/missing.png", webhook=f"{base}/flaky", celery=True, **prompt
    ).json()["task_id"]
    sync = submit(
        client, image=f"{base}/photo.png", webhook=f"{base}/refuse",
        webhook_events_filter=["progress"], celery=False, **prompt,
    ).json()  # fmt: skip
    assert poll(client, done)["status"] == "SUCCESS"
    assert poll(client, failed)["error"] == "image: the URL answered HTTP 404"
    assert poll(client, sync["task_id"])["status"] == "SUCCESS"

    wait_for(lambda: receiver.count("/" + MARKER + "/hook", "task.completed") == 1, "done's")
    wait_for(lambda: receiver.count("/" + MARKER + "/flaky", "task.completed") == 2, "a retry")
    assert receiver.count("/" + MARKER + "/refuse", "task.progress") >= 1
    webhooks_log = logs_dir / "webhooks.log"
    wait_for(  # the deliverer has written its lines about all three
        lambda: all(task in webhooks_log.read_text() for task in (done, failed, sync["task_id"])),
        "the deliverer's lines",
    )
    return [done, failed, sync["task_id"]]


def test_the_jobs_are_in_the_logs_searched(jobs: list[str], logs_dir: Path) -> None:
    logs = {path.name: text for path, text in log_text(logs_dir).items()}
    assert {"api.log", "webhooks.log", "worker-a10g.log"} <= set(logs)
    for task_id in jobs:
        assert task_id in logs["api.log"]  # the access lines of its submit and polls
        assert task_id in logs["webhooks.log"]


def test_no_log_holds_a_prompt_an_image_url_a_webhook_url_or_a_presigned_url(
    jobs: list[str], logs_dir: Path
) -> None:
    leaks = [
        f"{path.name}:{number}: {line[:300]}"
        for path, text in log_text(logs_dir).items()
        for number, line in enumerate(text.splitlines(), 1)
        if MARKER in line or PRESIGNED in line
    ]
    assert leaks == []
