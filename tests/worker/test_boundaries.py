"""The light worker-side processes stay light: neither the webhook deliverer, the readiness
probe nor a loadtest job loads torch, diffusers or Flask, so they need no GPU image."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
{imports}
banned = {{"torch", "diffusers", "transformers", "flask", "api"}}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in banned)))
"""

LIGHT = {
    "webhooks": "from worker.webhooks import create_webhook_celery\n"
    "from shared.settings import Settings\n"
    "create_webhook_celery(Settings(webhook_secret='whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3'))",
    "ready probe": "import worker.ready",
    "reaper": "import worker.reaper",
    # A loadtest job's own path, with the worker's modules loaded: the BENCHMARK backend
    # must measure Easel, so a loadtest-only worker never maps torch (bench section 3).
    "loadtest job": "import worker.celery_app, worker.runner\n"
    "from shared.models import GenerationParams\n"
    "from shared.registry import load_registry\n"
    "from worker.images import encode_png, prepare_image\n"
    "from worker.loadtest import run_loadtest\n"
    "from tests.conftest import png_bytes\n"
    "spec = load_registry().get('loadtest')\n"
    "params = GenerationParams(app_id='loadtest', prompt='p', guidance_scale=7.5, batch=2,\n"
    "    strength=0.7, height=512, width=512)\n"
    "prepare_image(png_bytes(), spec.family, 512, 512)\n"
    "assert len([encode_png(i) for i in run_loadtest(spec, params, [1, 2])]) == 2",
}


@pytest.mark.parametrize("name", sorted(LIGHT))
def test_light_processes_import_no_ml_and_no_flask(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=LIGHT[name])],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
