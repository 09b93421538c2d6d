"""A simulated pipeline for benchmarks: no ML, a batch cost model, the worker's real path.

``load_simulated`` is a ``worker.pipelines.Loader``: ``python -m bench.worker`` passes it to
the worker, which then runs its production path (record, progress, cancel, batching,
upload) around a pipe that only sleeps. A registry entry selects it by its source::

    source = "sim:a100-sd15-eager?t1=0.4"        # profile, seconds of one batch-1 call

One call of b rows sleeps t(b) = b * t1 / g(b) in all, spread evenly over the steps it
runs (the callback runs after each step, so progress and cancel behave as in diffusers),
whatever the step count: strength changes how many steps, not what the call costs.
g(b) comes from published batching gains (issue 12 cites them): linear between the
listed batch sizes, flat past the largest. Each row's image is a 64x64 flat colour drawn
from its generator's seed, so the same seed gives the same bytes.

For the benchmarks' histograms, a call log: with ``?log=PATH`` in the source, or
BENCH_CALL_LOG in the worker's environment, each call appends one JSON line (monotonic
and wall-clock start and end, rows, steps run, pid, whether it ran to the end).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from shared.errors import ModelError
from shared.registry import ModelSpec
from shared.settings import Settings

PREFIX = "sim:"
CALL_LOG_ENV = "BENCH_CALL_LOG"
IMAGE_SIDE = 64  # small on purpose: the upload path runs, its cost stays negligible

# Images/s of one batch-b call relative to b batch-1 calls (g(1) = 1 is implied).
PROFILES: dict[str, dict[int, float]] = {
    "a100-sd15-eager": {1: 1.0, 2: 1.66, 4: 2.04, 8: 2.25},  # diffusers PR #2764
    "a100-sd15-compiled": {1: 1.0, 4: 1.34},  # diffusers' torch 2.0 docs
    "a10g-sd15": {1: 1.0, 4: 1.24, 8: 1.31},
    "sdxl-1024": {1: 1.0, 4: 1.1},
    "none": {1: 1.0},  # no gain: b rows cost b batch-1 calls
}


def gain(points: Mapping[int, float], rows: int) -> float:
    """g(rows): linear between the listed batch sizes, flat past the largest (1 at b=1)."""
    if rows < 1:
        raise ValueError(f"rows: must be at least 1, got {rows}")
    known = sorted({1: 1.0, **points}.items())
    for (low, g_low), (high, g_high) in itertools.pairwise(known):
        if low <= rows <= high:
            return g_low + (g_high - g_low) * (rows - low) / (high - low)
    return known[-1][1]


@dataclass(frozen=True)
class CostModel:
    """t(b) = b * t1 / g(b), for one named profile."""

    profile: str
    t1: float

    def gain(self, rows: int) -> float:
        """g(rows) of this profile."""
        return gain(PROFILES[self.profile], rows)

    def seconds(self, rows: int) -> float:
        """How long one call of ``rows`` rows takes."""
        return rows * self.t1 / self.gain(rows)


@dataclass(frozen=True)
class SimSource:
    """What a ``sim:`` source says: the cost model, and where to log calls (if anywhere)."""

    cost: CostModel
    call_log: Path | None = None


def parse_source(source: str) -> SimSource:
    """Read ``sim:PROFILE?t1=SECONDS[&log=PATH]``; a ModelError that names what is wrong."""
    if not source.startswith(PREFIX):
        raise ModelError(f"source: {source!r} is not a simulated pipeline ({PREFIX}PROFILE)")
    parts = urlsplit(source.removeprefix(PREFIX))
    profile, query = parts.path, parse_qs(parts.query)
    if profile not in PROFILES:
        raise ModelError(f"source: unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    try:
        t1 = float(query.get("t1", ["0.5"])[0])
    except ValueError:
        raise ModelError(f"source: t1 in {source!r} is not a number") from None
    if not 0 < t1 <= 60:
        raise ModelError(f"source: t1 in {source!r} must be in (0, 60] seconds")
    log = query.get("log", [""])[0]
    return SimSource(CostModel(profile, t1), Path(log) if log else None)


def load_simulated(spec: ModelSpec, settings: Settings) -> SimulatedPipe:
    """The Loader ``python -m bench.worker`` passes to the worker: a pipe that only sleeps."""
    parsed = parse_source(spec.source)
    log = parsed.call_log or os.environ.get(CALL_LOG_ENV) or None
    return SimulatedPipe(parsed.cost, Path(log) if log else None)


class _Vae:
    """What run_img2img touches of a VAE: its tiling switch."""

    tiling = False

    def enable_tiling(self) -> None:
        self.tiling = True

    def disable_tiling(self) -> None:
        self.tiling = False


class SimulatedPipe:
    """Called as run_img2img calls a diffusers img2img pipeline; sleeps t(rows)."""

    def __init__(self, cost: CostModel, call_log: Path | None = None) -> None:
        self.cost = cost
        self.call_log = call_log
        self.vae = _Vae()
        self.unet = SimpleNamespace()  # not compiled: serving_stance looks for _orig_mod
        self.num_timesteps = 0

    def __call__(
        self,
        prompt: str | Sequence[str],
        image: Image.Image | Sequence[Image.Image],
        strength: float = 0.8,
        num_inference_steps: int = 50,
        num_images_per_prompt: int = 1,
        generator: Any = None,
        callback_on_step_end: Callable[..., Any] | None = None,
        **_unused: Any,
    ) -> SimpleNamespace:
        """1. Check inputs, 2. count steps as diffusers does, 3. sleep step by step, 4. images."""
        # 1. Check inputs: one prompt, one image and one generator per row.
        rows = (1 if isinstance(prompt, str) else len(prompt)) * num_images_per_prompt
        images = 1 if isinstance(image, Image.Image) else len(image)
        if images * num_images_per_prompt != rows:
            raise ValueError(f"image: {images} images for {rows} rows")
        seeds = row_seeds(generator, rows)
        # 2. diffusers' img2img skips the first (1 - strength) of the schedule.
        self.num_timesteps = steps_run(num_inference_steps, strength)
        # 3. Sleep t(rows), step by step; raising from the callback stops it there.
        started = (time.monotonic(), time.time())
        completed = False
        try:
            self._denoise(rows, callback_on_step_end)
            completed = True
        finally:
            self._log(started, rows, completed)
        # 4. One flat image per row.
        return SimpleNamespace(images=[flat_image(seed) for seed in seeds])

    def _denoise(self, rows: int, callback: Callable[..., Any] | None) -> None:
        steps, total = self.num_timesteps, self.cost.seconds(rows)
        begun = time.monotonic()
        tensors: dict[str, Any] = {}
        for index in range(steps):
            # Sleep to each step's deadline, so oversleeping one step does not add up.
            time.sleep(max(0.0, begun + total * (index + 1) / steps - time.monotonic()))
            if callback is not None:
                tensors = callback(self, index, steps - index, tensors)

    def _log(self, started: tuple[float, float], rows: int, completed: bool) -> None:
        if self.call_log is None:
            return
        line = {"start": started[0], "end": time.monotonic(), "wall_start": started[1],
                "wall_end": time.time(), "rows": rows, "steps": self.num_timesteps,
                "pid": os.getpid(), "completed": completed}  # fmt: skip
        # One short O_APPEND write per call: lines from several workers never interleave.
        with open(self.call_log, "a") as out:
            out.write(json.dumps(line) + "\n")


def read_call_log(path: Path, since: float, until: float) -> list[dict[str, Any]]:
    """The logged calls that started between two wall-clock times (time.time())."""
    if not path.exists():
        return []
    calls = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [call for call in calls if since <= call["wall_start"] <= until]


def steps_run(num_inference_steps: int, strength: float) -> int:
    """The denoising steps diffusers' img2img runs for these settings."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    steps = num_inference_steps - max(num_inference_steps - init_timestep, 0)
    if steps < 1:
        raise ValueError(f"strength: {strength} leaves no step of {num_inference_steps}")
    return steps


def row_seeds(generator: Any, rows: int) -> list[int]:
    """Each row's seed from its generator (torch.Generator.initial_seed)."""
    generators = generator if isinstance(generator, list) else [generator] * rows
    if len(generators) != rows:
        raise ValueError(f"generator: {len(generators)} generators for {rows} rows")
    return [0 if g is None else int(g.initial_seed()) for g in generators]


def flat_image(seed: int) -> Image.Image:
    """A 64x64 image of one colour, a function of the seed alone."""
    colour = (seed * 37 % 256, seed * 101 % 256, seed * 211 % 256)
    return Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), colour)
