"""What a user of the easel-client wheel runs, in a virtualenv that holds only that wheel and
its dependencies (test_sdk_wheel.py builds it and runs this with ``python -I``).

It reads its inputs as JSON from argv[1] and prints one JSON report on stdout; the test
asserts on the report. It may import only the standard library and the SDK.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import easel_client
from easel_client import AsyncClient, Client, InvalidWebhook, TaskCanceled, verify_webhook

Deliveries = list[tuple[dict[str, str], bytes]]


def png_size(content: bytes) -> list[int] | None:
    """A PNG's width and height from its IHDR chunk, or None if it is no PNG."""
    if not content.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return list(struct.unpack(">II", content[16:24]))


def start_receiver() -> tuple[str, Deliveries]:
    """A loopback webhook receiver that keeps each delivery's headers and raw body."""
    deliveries: Deliveries = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            deliveries.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/hook", deliveries


def sync_job(inputs: dict[str, Any], webhook: str) -> dict[str, Any]:
    """A job end to end with ``Client``: submit, progress bar, images."""
    bar = io.StringIO()
    with Client(inputs["api_url"], inputs["api_key"]) as easel:
        apps = [app["app_id"] for app in easel.apps()]
        task = easel.image_to_image(
            inputs["image"], "a sync job", width=512, height=512, seed=5, strength=1.0,
            webhook=webhook, webhook_events_filter=["completed"],
        )  # fmt: skip
        task.wait(timeout=120, progress=bar)
        images = task.images()
    return {
        "apps": apps, "id": task.id, "status": task.status, "bar": bar.getvalue(),
        "sizes": [png_size(image) for image in images], "seeds": task.seeds,
    }  # fmt: skip


async def async_jobs(inputs: dict[str, Any]) -> dict[str, Any]:
    """A job end to end with ``AsyncClient``, then a queued job canceled."""
    bar = io.StringIO()
    async with AsyncClient(inputs["api_url"], inputs["api_key"]) as easel:
        task = await easel.image_to_image(inputs["image"], "an async job", width=512, height=512)
        await task.wait(timeout=120, progress=bar)
        images = await task.images()
        # A slow job holds the a100 worker, so the next job on its queue waits.
        blocker = await easel.image_to_image(
            inputs["image"], "blocker", inference_type="a100", batch=2, strength=1.0
        )
        queued = await easel.image_to_image(inputs["image"], "never", inference_type="a100")
        state_before = queued.state
        await queued.cancel()
        answered = queued.status
        try:
            await queued.wait(timeout=60)
            ended = f"no TaskCanceled: {queued.status}"
        except TaskCanceled as canceled:
            ended = canceled.task.status
        await blocker.cancel()
        await blocker.wait(timeout=60, raise_on_error=False)
    return {
        "status": task.status, "bar": bar.getvalue(),
        "sizes": [png_size(image) for image in images],
        "cancel": {"state_before": state_before, "answered": answered, "ended": ended},
    }  # fmt: skip


def check_webhooks(inputs: dict[str, Any], deliveries: Deliveries) -> dict[str, Any]:
    """The helper on a payload the test signed, on a tampered one, and on a real delivery."""
    secret, signed = inputs["webhook_secret"], inputs["signed"]
    event = verify_webhook(signed["body"].encode(), signed["headers"], secret)
    try:
        verify_webhook(signed["body"].replace("t-signed", "t-forged"), signed["headers"], secret)
        tampered = "accepted"
    except InvalidWebhook:
        tampered = "rejected"
    real = []
    for _ in range(600):  # the completed event is queued when the job ends: up to 60 s
        real = [verify_webhook(body, headers, secret) for headers, body in deliveries]
        if real:
            break
        time.sleep(0.1)
    return {"signed": event, "tampered": tampered, "delivered": real}


def main() -> None:
    """Run everything and print the report."""
    with open(sys.argv[1]) as file:
        inputs = json.load(file)
    webhook, deliveries = start_receiver()
    sync = sync_job(inputs, webhook)
    report = {
        "sdk_file": easel_client.__file__,
        "sync": sync,
        "async": asyncio.run(async_jobs(inputs)),
        "webhooks": check_webhooks(inputs, deliveries),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
