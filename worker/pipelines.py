"""Loading diffusers pipelines once per process and running them.

torch and diffusers are imported inside functions, so importing this module stays
cheap and a Celery parent process never initialises torch before it forks.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from shared.errors import JobError, ModelError
from shared.models import GenerationParams
from shared.registry import ModelFamily, ModelSpec
from shared.settings import Settings
from worker.tiny_models import BUILTIN_PREFIX, ensure_tiny_model

Loader = Callable[[ModelSpec, Settings], Any]


class PipelineCache:
    """An LRU of loaded pipelines, bounded by count and by a VRAM budget; loads are serialized.

    ``vram_budget_gb`` evicts least-recently-used pipelines until the next model's
    ``vram_gb`` fits beside the ones kept. None means: 90 % of the GPU's memory on CUDA,
    read when the first model loads (in the process that runs jobs, never the Celery
    parent, which must not touch CUDA before it forks), and unbounded on CPU. ``load`` is
    swappable for tests.
    """

    def __init__(
        self,
        settings: Settings,
        capacity: int = 2,
        vram_budget_gb: float | None = None,
        load: Loader | None = None,
    ) -> None:
        self.settings = settings
        self.capacity = capacity
        self.vram_budget_gb = vram_budget_gb
        self._budget_read = vram_budget_gb is not None
        self._load = load or load_pipeline
        self._pipes: OrderedDict[str, tuple[ModelSpec, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> tuple[Any, float]:
        """The pipeline for a model, and the seconds spent loading it now (0 when cached)."""
        with self._lock:
            if spec.app_id in self._pipes:
                self._pipes.move_to_end(spec.app_id)
                return self._pipes[spec.app_id][1], 0.0
            started = time.perf_counter()
            self._make_room(spec)
            pipe = self._load(spec, self.settings)
            self._pipes[spec.app_id] = (spec, pipe)
            return pipe, time.perf_counter() - started

    def clear(self) -> None:
        """Drop every pipeline and free its memory (after CUDA ran out of it)."""
        with self._lock:
            self._pipes.clear()
            release_memory(self.settings.device)

    def release(self) -> None:
        """Keep the pipelines, free what a failed job left behind (its tensors' blocks)."""
        with self._lock:
            release_memory(self.settings.device)

    def loaded(self) -> list[str]:
        """The app_ids held now, least recently used first."""
        return list(self._pipes)

    def _make_room(self, spec: ModelSpec) -> None:
        if not self._budget_read:
            self.vram_budget_gb = device_budget_gb(self.settings.device)
            self._budget_read = True
        budget = self.vram_budget_gb
        if budget is not None and spec.vram_gb > budget:
            raise ModelError(
                f"model {spec.app_id!r} needs about {spec.vram_gb} GB of GPU memory, "
                f"more than this worker's budget of {budget} GB"
            )
        evicted = False
        while self._pipes and (len(self._pipes) >= self.capacity or self._over_budget(spec)):
            self._pipes.popitem(last=False)
            evicted = True
        if evicted:
            release_memory(self.settings.device)

    def _over_budget(self, spec: ModelSpec) -> bool:
        if self.vram_budget_gb is None:
            return False
        held = sum(kept.vram_gb for kept, _ in self._pipes.values())
        return held + spec.vram_gb > self.vram_budget_gb


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError (without importing torch just to check)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def release_memory(device_setting: str) -> None:
    """Free what evicted pipelines held: collect their cycles, then CUDA's cached blocks."""
    import torch

    gc.collect()  # a pipeline's modules reference each other; drop them before emptying
    if pick_device(device_setting).startswith("cuda"):
        torch.cuda.empty_cache()


def device_budget_gb(device_setting: str, share: float = 0.9) -> float | None:
    """``share`` of the GPU's memory in GB on CUDA (the rest is activations' headroom);
    None on CPU."""
    import torch

    device = pick_device(device_setting)
    if not device.startswith("cuda"):
        return None
    total: int = torch.cuda.get_device_properties(torch.device(device)).total_memory
    return round(share * total / 2**30, 1)


def pick_device(setting: str) -> str:
    """``cuda`` when asked for or available under ``auto``; otherwise ``cpu``."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_source(
    source: str, settings: Settings, marker: str = "model_index.json"
) -> tuple[str, bool]:
    """Where ``from_pretrained`` should look for ``source``, and whether that is a local folder.

    ``marker`` is a file a complete folder holds (a pipeline's ``model_index.json``, a
    safety checker's ``preprocessor_config.json``): an ``s3://`` copy that has it is kept.
    """
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        return str(ensure_tiny_model(name, settings.model_dir)), True
    if source.startswith("s3://"):
        return str(download_s3_prefix(source, settings, marker)), True
    if Path(source).is_dir():
        return source, True
    return source, False  # a Hugging Face repo id


def download_s3_prefix(uri: str, settings: Settings, marker: str = "model_index.json") -> Path:
    """Copy a model folder from ``s3://bucket/prefix`` into the model directory once."""
    from shared.storage import Storage

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    target = settings.model_dir / "s3" / bucket / prefix
    if (target / marker).exists():
        return target
    client = Storage(settings).client
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", []):
            dest = target / Path(item["Key"]).relative_to(prefix or ".")
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(dest))
    return target


def quiet_hf_logging() -> None:
    """No progress bars from diffusers or transformers; their lines go out as JSON too."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()


def load_pipeline(spec: ModelSpec, settings: Settings) -> Any:
    """Load one model through diffusers' AutoPipelineForImage2Image."""
    import torch
    from diffusers import AutoPipelineForImage2Image

    quiet_hf_logging()
    device = pick_device(settings.device)
    dtype = getattr(torch, spec.dtype) if device.startswith("cuda") else torch.float32
    source, local = resolve_source(spec.source, settings)
    # worker/safety.py checks each batch once, after decoding: SD's own checker stays off.
    no_checker: dict[str, Any] = {}
    if spec.family is ModelFamily.SD:
        no_checker = {"safety_checker": None, "feature_extractor": None}
        no_checker["requires_safety_checker"] = False  # else diffusers warns at every load
    # Safetensors only: unpickling a .bin runs whatever code it holds. None is diffusers'
    # default (safetensors first, else the pickle), for a registry entry that allows it.
    use_safetensors = None if spec.allow_pickle else True
    try:
        pipe = AutoPipelineForImage2Image.from_pretrained(
            source,
            dtype=dtype,
            local_files_only=local,
            use_safetensors=use_safetensors,
            **no_checker,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model {spec.app_id!r} failed to load from {spec.source!r}: {exc}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return apply_speed_settings(pipe.to(device), spec, device)


# torch.compile choice: static shapes (dynamic=False), warmed at load for every configured
# size and every batch a request may ask for. Static graphs let inductor specialise each
# kernel to its shape (and max-autotune tune it), which a dynamic graph gives up for sizes
# most workers never serve. The trap is a request at an unwarmed size: compiling then takes
# minutes inside the request, and past torch's recompile limit it falls back to eager
# anyway. So run_img2img serves under the "eager_on_recompile" stance: warmed shapes run
# compiled, any other shape (or guidance_scale <= 1, which halves the UNet batch) runs the
# plain UNet instead of compiling.
WARM_BATCHES = (1, 2, 3, 4)  # GenerationParams.batch's range; max_batch may add more
WARM_STEPS = 3  # shapes do not depend on steps; 3 UNet calls also record CUDA graphs


def apply_speed_settings(pipe: Any, spec: ModelSpec, device: str) -> Any:
    """The spec's attention kernel everywhere; channels_last and torch.compile on CUDA only."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0 if spec.attention == "sdpa" else AttnProcessor
    pipe.unet.set_attn_processor(processor())
    pipe.vae.set_attn_processor(processor())
    if not device.startswith("cuda"):
        return pipe
    if spec.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if spec.compile:
        compile_unet(pipe, spec)
    return pipe


def compile_unet(
    pipe: Any, spec: ModelSpec, backend: str | Callable[..., Any] = "inductor"
) -> None:
    """Compile the UNet with static shapes and warm every ``compile_sizes`` x every batch a
    call may hold: 1-4 (one request), up to ``max_batch`` (partners)."""
    import torch

    batches = sorted({*WARM_BATCHES, *range(1, spec.max_batch + 1)})
    graphs = len(spec.compile_sizes) * len(batches)
    config = torch._dynamo.config  # one graph per shape; twice that leaves headroom
    config.cache_size_limit = max(config.cache_size_limit, 2 * graphs)
    mode = {"mode": spec.compile_mode} if backend == "inductor" else {}
    pipe.unet = torch.compile(pipe.unet, backend=backend, fullgraph=True, dynamic=False, **mode)
    for width, height in spec.compile_sizes:
        image = Image.new("RGB", (width, height), (127, 127, 127))
        for batch in batches:
            with torch.inference_mode():
                pipe(
                    prompt="warm-up",
                    image=image,
                    strength=1.0,
                    guidance_scale=7.5,
                    num_inference_steps=WARM_STEPS,
                    num_images_per_prompt=batch,
                    output_type="latent",
                )


def serving_stance(pipe: Any) -> contextlib.AbstractContextManager[Any]:
    """Inside a request a compiled UNet may reuse its warmed graphs but never compile."""
    import torch

    if hasattr(pipe.unet, "_orig_mod"):  # torch.compile's OptimizedModule
        stance: contextlib.AbstractContextManager[Any] = torch.compiler.set_stance(
            "eager_on_recompile"
        )
        return stance
    return contextlib.nullcontext()


def set_vae_tiling(pipe: Any, spec: ModelSpec, size: tuple[int, int]) -> None:
    """Tile the VAE for outputs wider or taller than the spec's threshold, else not."""
    if max(size) > spec.vae_tiling_above:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()


StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class BatchItem:
    """One job's share of a pipeline call: its params, its fitted input, a seed per image."""

    params: GenerationParams
    image: Image.Image
    seeds: list[int]


def run_img2img(
    pipe: Any,
    spec: ModelSpec,
    items: Sequence[BatchItem],
    on_step: StepCallback | None = None,
) -> list[list[Image.Image]]:
    """One pipeline call for one or more compatible jobs; each job's images, in order.

    Every image is its own row: its job's prompt, negative prompt and input, and its own
    generator, so image ``i`` of a job draws its noise from that job's ``seeds[i]`` whoever
    its partners are. Shared settings (steps after strength, guidance, size) are the first
    item's; worker/batcher.py only groups jobs whose settings give the same call.
    ``on_step(step, total)`` runs after every denoising step; raising from it stops the run.
    """
    import torch

    def step_end(pipeline: Any, index: int, _timestep: Any, tensors: dict[str, Any]) -> Any:
        if on_step is not None:
            on_step(index + 1, pipeline.num_timesteps)
        return tensors

    first = items[0].params
    steps = spec.steps_for(first.strength)
    if steps is None:  # the API refuses these; a message is never trusted
        raise JobError(f"strength: too small for {spec.app_id!r} (max_steps {spec.step_cap})")
    rows = [(item, seed) for item in items for seed in item.seeds]
    negatives = [item.params.negative_prompt for item, _ in rows]
    set_vae_tiling(pipe, spec, items[0].image.size)
    with torch.inference_mode(), serving_stance(pipe):
        result = pipe(
            prompt=[item.params.prompt for item, _ in rows],
            # All None or all text: the batch key keeps them apart (SDXL encodes them apart).
            negative_prompt=None if negatives[0] is None else negatives,
            image=[item.image for item, _ in rows],
            strength=first.strength,
            guidance_scale=first.guidance_scale,
            num_inference_steps=steps,
            num_images_per_prompt=1,
            generator=[torch.Generator(device="cpu").manual_seed(seed) for _, seed in rows],
            output_type="pil",
            callback_on_step_end=step_end,
        )
    images: list[Image.Image] = result.images
    shares, start = [], 0
    for item in items:
        shares.append(images[start : start + len(item.seeds)])
        start += len(item.seeds)
    return shares
