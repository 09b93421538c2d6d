"""The load-test backend (``app_id: loadtest``): a BENCHMARK backend, not a model.

It runs no ML and never imports torch. A job holds its worker for ``default_steps``
steps of ``step_seconds`` each (a sleep), reporting progress and honouring cancels
between steps like a real pipeline, then returns one tiny deterministic image per seed.
The rest of the job runs as usual, upload to S3 included, so a load test still measures
Easel's own per-job cost: Redis, Celery, S3. ``bench/scaling.py`` uses it to measure how
throughput grows with worker processes on one queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from PIL import Image

from shared.models import GenerationParams
from shared.registry import ModelSpec

IMAGE_SIDE = 64  # small on purpose: the upload path runs, its cost stays negligible


def run_loadtest(
    spec: ModelSpec,
    params: GenerationParams,
    seeds: list[int],
    on_step: Callable[[int, int], None] | None = None,
) -> list[Image.Image]:
    """Sleep ``spec.step_seconds`` per step, then one flat image per seed (same seed, same
    bytes); ``on_step(step, total)`` runs after every step and may raise to stop."""
    steps = spec.default_steps
    for step in range(1, steps + 1):
        time.sleep(spec.step_seconds)
        if on_step is not None:
            on_step(step, steps)
    return [
        Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), _colour(seed)) for seed in seeds[: params.batch]
    ]


def _colour(seed: int) -> tuple[int, int, int]:
    return (seed * 37 % 256, seed * 101 % 256, seed * 211 % 256)
