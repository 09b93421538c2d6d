"""The API stays thin: importing and building it loads no torch, diffusers or worker code."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from api import create_app
from shared.settings import Settings
app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
app.test_client().get("/health")
banned = {"torch", "diffusers", "transformers", "worker"}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in banned)
print(json.dumps(heavy))
"""


def test_api_imports_no_torch_diffusers_or_worker() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_probe_would_notice_torch() -> None:
    probe = PROBE.replace("from api import create_app", "import torch\nfrom api import create_app")
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert "torch" in json.loads(result.stdout.strip().splitlines()[-1])
