"""Loading diffusers pipelines once per process and running them.

torch and diffusers are imported inside functions, so importing this module stays
cheap and a Celery parent process never initialises torch before it forks.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from shared.errors import ModelError
from shared.models import GenerationParams
from shared.registry import ModelSpec
from shared.settings import Settings
from worker.tiny_models import BUILTIN_PREFIX, ensure_tiny_model


class PipelineCache:
    """A small LRU of loaded pipelines; loading is serialized so a model loads once."""

    def __init__(self, settings: Settings, capacity: int = 2) -> None:
        self.settings = settings
        self.capacity = capacity
        self._pipes: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> tuple[Any, float]:
        """The pipeline for a model, and the seconds spent loading it now (0 when cached)."""
        with self._lock:
            if spec.app_id in self._pipes:
                self._pipes.move_to_end(spec.app_id)
                return self._pipes[spec.app_id], 0.0
            started = time.perf_counter()
            pipe = load_pipeline(spec, self.settings)
            self._pipes[spec.app_id] = pipe
            while len(self._pipes) > self.capacity:
                self._pipes.popitem(last=False)
            return pipe, time.perf_counter() - started


def pick_device(setting: str) -> str:
    """``cuda`` when asked for or available under ``auto``; otherwise ``cpu``."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_source(spec: ModelSpec, settings: Settings) -> tuple[str, bool]:
    """Where ``from_pretrained`` should look, and whether that is a local folder."""
    if spec.source.startswith(BUILTIN_PREFIX):
        name = spec.source.removeprefix(BUILTIN_PREFIX)
        return str(ensure_tiny_model(name, settings.model_dir)), True
    if spec.source.startswith("s3://"):
        return str(download_s3_prefix(spec.source, settings)), True
    if Path(spec.source).is_dir():
        return spec.source, True
    return spec.source, False  # a Hugging Face repo id


def download_s3_prefix(uri: str, settings: Settings) -> Path:
    """Copy a diffusers folder from ``s3://bucket/prefix`` into the model directory once."""
    from shared.storage import Storage

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    target = settings.model_dir / "s3" / bucket / prefix
    if (target / "model_index.json").exists():
        return target
    client = Storage(settings).client
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", []):
            dest = target / Path(item["Key"]).relative_to(prefix or ".")
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(dest))
    return target


def load_pipeline(spec: ModelSpec, settings: Settings) -> Any:
    """Load one model through diffusers' AutoPipelineForImage2Image."""
    import torch
    from diffusers import AutoPipelineForImage2Image
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    device = pick_device(settings.device)
    dtype = getattr(torch, spec.dtype) if device.startswith("cuda") else torch.float32
    source, local = resolve_source(spec, settings)
    try:
        pipe = AutoPipelineForImage2Image.from_pretrained(
            source, dtype=dtype, local_files_only=local
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model {spec.app_id!r} failed to load from {spec.source!r}: {exc}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def effective_steps(default_steps: int, strength: float) -> int:
    """Enough steps that at least one denoising step remains after strength cuts them."""
    return max(default_steps, math.ceil(1 / strength))


StepCallback = Callable[[int, int], None]


def run_img2img(
    pipe: Any,
    spec: ModelSpec,
    image: Image.Image,
    params: GenerationParams,
    seeds: list[int],
    on_step: StepCallback | None = None,
) -> list[Image.Image]:
    """One batched pipeline call; image ``i`` draws its noise from ``seeds[i]``.

    ``on_step(step, total)`` runs after every denoising step; raising from it stops the run.
    """
    import torch

    def step_end(pipeline: Any, index: int, _timestep: Any, tensors: dict[str, Any]) -> Any:
        if on_step is not None:
            on_step(index + 1, pipeline.num_timesteps)
        return tensors

    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        result = pipe(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            image=image,
            strength=params.strength,
            guidance_scale=params.guidance_scale,
            num_inference_steps=effective_steps(spec.default_steps, params.strength),
            num_images_per_prompt=params.batch,
            generator=generators,
            output_type="pil",
            callback_on_step_end=step_end,
        )
    images: list[Image.Image] = result.images
    return images
