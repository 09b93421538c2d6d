"""The model registry: which app_ids exist, what they are, and who may run them."""

from __future__ import annotations

import math
import tomllib
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter, model_validator

from shared.errors import UnknownApp, field_error
from shared.models import AppInfo, InferenceType


class ModelFamily(StrEnum):
    SD = "sd"
    SDXL = "sdxl"


CompileMode = Literal["max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune", "default"]


class ModelSpec(BaseModel):
    """One registry entry, with its speed settings (see registry.toml's header)."""

    app_id: str
    family: ModelFamily
    source: str
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    default_steps: int = Field(default=30, ge=1, le=200)
    # The most denoising steps one request may cause (None: 4 x default_steps). img2img
    # runs steps x strength of the schedule, so a tiny strength needs ceil(1/strength)
    # steps for one to remain; past this, the API answers 400 naming strength.
    max_steps: int | None = Field(default=None, ge=1, le=1000)
    inference_types: list[InferenceType]
    description: str = ""
    attention: Literal["sdpa", "eager"] = "sdpa"
    channels_last: bool = False
    vae_tiling_above: int = Field(default=1024, ge=64)
    compile: bool = False
    compile_mode: CompileMode = "max-autotune-no-cudagraphs"
    compile_sizes: list[tuple[int, int]] = Field(default_factory=list)
    vram_gb: float = Field(default=0.0, ge=0)
    # The safety checker run over each batch's images: a Hugging Face repo id (e.g.
    # CompVis/stable-diffusion-safety-checker), a local folder, an s3:// prefix,
    # "builtin:tiny-safety" (generated locally, random weights, for tests), or None.
    safety_checker: str | None = None
    # Load weights only from .safetensors unless true: a pickled .bin or .ckpt runs code
    # when unpickled. Only for a trusted model that has no safetensors.
    allow_pickle: bool = False
    # Cross-request batching (worker/batcher.py): up to max_batch images of compatible jobs
    # share one pipeline call; a lone job waits at most max_wait_ms for partners. 1: off.
    # A job's own batch counts toward it, and is never split.
    max_batch: int = Field(default=1, ge=1, le=64)
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    # Soft time limit of one job (None: EASEL_JOB_SOFT_TIME_LIMIT_S); the hard one is 60 s
    # later. Capped at 3 h so the hard limit stays under the 6 h visibility timeout.
    time_limit_s: int | None = Field(default=None, ge=1, le=3 * 3600)

    @model_validator(mode="after")
    def _max_steps_covers_default(self) -> ModelSpec:
        if self.max_steps is None:
            self.max_steps = 4 * self.default_steps
        if self.max_steps < self.default_steps:
            raise ValueError("max_steps: must be at least default_steps")
        return self

    @property
    def step_cap(self) -> int:
        """``max_steps``, filled in."""
        return self.max_steps or 4 * self.default_steps

    def steps_for(self, strength: float) -> int | None:
        """The steps a job of this strength runs, or None past ``max_steps``."""
        steps = effective_steps(self.default_steps, strength)
        return steps if steps <= self.step_cap else None

    @model_validator(mode="after")
    def _compile_needs_sizes(self) -> ModelSpec:
        if self.compile and not self.compile_sizes:
            raise ValueError("compile_sizes: list the [width, height] sizes to compile at load")
        for width, height in self.compile_sizes:
            if width <= 0 or height <= 0 or width % 64 or height % 64:
                raise ValueError(f"compile_sizes: {[width, height]} is not a multiple of 64")
        return self

    def info(self) -> AppInfo:
        """The public view of this entry."""
        return AppInfo(
            app_id=self.app_id,
            family=self.family.value,
            default_steps=self.default_steps,
            inference_types=self.inference_types,
            description=self.description,
        )


class Registry:
    """All models, by app_id."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self.specs = {spec.app_id: spec for spec in specs}

    def get(self, app_id: str) -> ModelSpec:
        """The spec of one app_id, or UnknownApp."""
        try:
            return self.specs[app_id]
        except KeyError:
            raise UnknownApp(f"app_id: unknown model {app_id!r}; see GET /list_of_Apps") from None

    def check_runnable(self, app_id: str, inference_type: InferenceType) -> ModelSpec:
        """The spec, if this GPU class may run it."""
        spec = self.get(app_id)
        if inference_type not in spec.inference_types:
            allowed = ", ".join(spec.inference_types)
            raise field_error(
                "inference_type", "allowed_for_app", f"{app_id!r} runs only on {allowed}"
            )
        return spec


def effective_steps(default_steps: int, strength: float) -> int:
    """Enough steps that at least one denoising step remains after strength cuts them; for
    a vanishing strength, a huge number rather than an overflow (max_steps refuses it)."""
    needed = 1 / strength
    return default_steps if needed <= default_steps else math.ceil(min(needed, 2.0**31))


_SPECS = TypeAdapter(list[ModelSpec])


def load_registry(path: Path | None = None) -> Registry:
    """Read a registry TOML file; the built-in one when no path is given."""
    if path is None:
        text = resources.files("shared").joinpath("registry.toml").read_text()
    else:
        text = path.read_text()
    tables = tomllib.loads(text)
    return Registry(_SPECS.validate_python([{"app_id": k, **v} for k, v in tables.items()]))
