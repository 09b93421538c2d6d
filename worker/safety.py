"""The safety checker: loaded once per process, run once over each batch's decoded images.

A model's registry entry names its checker (``safety_checker``): a Hugging Face repo id
such as ``CompVis/stable-diffusion-safety-checker``, a local folder, an ``s3://`` prefix,
or ``builtin:tiny-safety`` (worker/tiny_models.py), resolved as a model's ``source`` is.
The folder holds diffusers' ``StableDiffusionSafetyChecker`` (a CLIP vision tower, the
embeddings of 17 concepts and 3 "special care" ones, and a threshold for each) and the
CLIP image processor that feeds it. Pipelines load with their own checker off
(worker/pipelines.py), so this is the one check.

The verdict is the one ``StableDiffusionSafetyChecker.forward`` reaches, computed here
from the same modules so that ``EASEL_NSFW_THRESHOLD`` can stand in for every threshold.
Then ``EASEL_NSFW_POLICY`` says what a flagged image becomes, before it is encoded: the
image and its preview alike.

torch, diffusers and transformers are imported inside functions, as in pipelines.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, ImageFilter

from shared.errors import ModelError
from shared.settings import Settings
from worker.pipelines import pick_device, quiet_hf_logging, resolve_source

Policy = Literal["flag", "blur", "block"]
BLUR_SHARE = 1 / 8  # the blur's radius, as a share of the image's shorter side
FOLDER_MARKER = "preprocessor_config.json"  # an s3:// copy holding it is complete


@dataclass(frozen=True)
class SafetyChecker:
    """A loaded checker: the model, the processor that makes its input, where it runs."""

    model: Any
    processor: Any
    device: str
    dtype: Any


CheckerLoader = Callable[[str, Settings], SafetyChecker]


class SafetyCheckers:
    """The checkers loaded in this process, by source: models that name the same checker
    share one. Loads are serialized; ``load`` is swappable for tests."""

    def __init__(self, load: CheckerLoader | None = None) -> None:
        self._load = load or load_checker
        self._checkers: dict[str, SafetyChecker] = {}
        self._lock = threading.Lock()

    def get(self, source: str, settings: Settings) -> tuple[SafetyChecker, float]:
        """The checker from ``source``, and the seconds spent loading it now (0 when cached)."""
        with self._lock:
            if source in self._checkers:
                return self._checkers[source], 0.0
            started = time.perf_counter()
            checker = self._checkers[source] = self._load(source, settings)
            return checker, time.perf_counter() - started

    def loaded(self) -> list[str]:
        """The sources held now."""
        return list(self._checkers)


def load_checker(source: str, settings: Settings) -> SafetyChecker:
    """Load a checker and its image processor through ``from_pretrained``."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import AutoImageProcessor

    quiet_hf_logging()
    device = pick_device(settings.device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    folder, local = resolve_source(source, settings, FOLDER_MARKER)
    try:
        model = StableDiffusionSafetyChecker.from_pretrained(
            folder,
            local_files_only=local,
            use_safetensors=True,  # never a pickle
        )
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ModelError(f"safety checker {source!r} failed to load: {exc}") from exc
    return SafetyChecker(model.to(device=device, dtype=dtype).eval(), processor, device, dtype)


def check(
    checker: SafetyChecker, images: list[Image.Image], threshold: float | None = None
) -> list[bool]:
    """Whether each image shows a flagged concept: one forward pass over the whole batch.

    ``threshold`` (-1 to 2) replaces every concept's own threshold; None keeps them.
    """
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    model = checker.model
    pixels = checker.processor(images, return_tensors="pt").pixel_values
    with torch.inference_mode():
        pooled = model.vision_model(pixels.to(checker.device, checker.dtype)).pooler_output
        embeds = model.visual_projection(pooled)
        special = cosine_distance(embeds, model.special_care_embeds).float().cpu()
        concepts = cosine_distance(embeds, model.concept_embeds).float().cpu()
    if threshold is not None:
        # One threshold for every concept and no special-care adjustment, so the special
        # concepts cannot matter. A concept counts once its similarity reaches the
        # threshold; a cosine lies in [-1, 1], so -1 flags every image and 2 none.
        flags: list[bool] = (concepts.clamp(-1.0, 1.0) >= threshold).any(dim=1).tolist()
        return flags
    return diffusers_verdict(
        special,
        concepts,
        model.special_care_embeds_weights.float().cpu(),
        model.concept_embeds_weights.float().cpu(),
    )


def diffusers_verdict(
    special: Any, concepts: Any, special_weights: Any, weights: Any
) -> list[bool]:
    """StableDiffusionSafetyChecker.forward's rule, on an image x concept matrix of cosines.

    A concept counts when its cosine, less its threshold, rounds (to 3 places) above 0.
    Special-care concepts flag nothing themselves; any of them counting makes the others'
    thresholds 0.01 lower.
    """
    import torch

    special_scores = torch.round(special - special_weights, decimals=3)
    adjustment = 0.01 * (special_scores > 0).any(dim=1, keepdim=True)
    scores = torch.round(concepts - weights + adjustment, decimals=3)
    flags: list[bool] = (scores > 0).any(dim=1).tolist()
    return flags


def apply_policy(images: list[Image.Image], flags: list[bool], policy: Policy) -> list[Image.Image]:
    """What each flagged image becomes: itself (flag), blurred (blur) or black (block)."""
    if policy == "flag":
        return list(images)
    treat = blur if policy == "blur" else black
    return [
        treat(image) if flagged else image for image, flagged in zip(images, flags, strict=True)
    ]


def blur(image: Image.Image) -> Image.Image:
    """A Gaussian blur with a radius of 1/8 of the shorter side: shapes and colours only."""
    radius = max(1.0, BLUR_SHARE * min(image.size))
    return image.filter(ImageFilter.GaussianBlur(radius))


def black(image: Image.Image) -> Image.Image:
    """A black image of the same size and mode."""
    return Image.new(image.mode, image.size)
