"""The light worker-side processes stay light: neither the webhook deliverer, the readiness
probe nor the worker's modules at import load torch, diffusers or Flask."""

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
    # The worker's own modules import torch only inside the functions that run a model,
    # so importing them (Celery's main process, the batcher, a bench worker) stays light.
    "worker modules": "import worker.celery_app, worker.runner, worker.batcher, worker.calls",
}


@pytest.mark.parametrize("name", sorted(LIGHT))
def test_light_processes_import_no_ml_and_no_flask(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=LIGHT[name])],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
