"""``easel submit``: send one job to a running API and, with ``--wait``, print its images."""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import time
from pathlib import Path
from typing import Any

import httpx


def image_argument(value: str) -> str:
    """A URL as it is, or a local file as a data URI."""
    if value.startswith(("http://", "https://", "data:")):
        return value
    path = Path(value)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def run_submit(args: argparse.Namespace) -> int:
    """Submit, optionally wait, and print; the exit status is 0 only on success."""
    if not args.api_key:
        print("error: pass --api-key or set EASEL_API_KEY (source .easel/dev.env)")
        return 2
    body: dict[str, Any] = {
        "app_id": args.app_id,
        "image": image_argument(args.image),
        "prompt": args.prompt,
        "batch": args.batch,
        "strength": args.strength,
        "inference_type": args.inference_type,
        "celery": True,
    }
    if args.seed is not None:
        body["seed"] = args.seed
    headers = {"Authorization": f"Bearer {args.api_key}"}
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=30) as client:
        envelope = client.post("/getImageToImage", json=body).json()
        while args.wait and envelope.get("status") == "PENDING" and envelope.get("task_id"):
            time.sleep(0.5)
            envelope = client.get(f"/tasks/{envelope['task_id']}").json()
    if args.wait and envelope.get("status") == "SUCCESS":
        for url in envelope["output"]["images"]:
            print(url)
    else:
        print(json.dumps(envelope, indent=2))
    return (
        0 if envelope.get("status") in ("SUCCESS", "PENDING") and not envelope.get("error") else 1
    )
