"""Tiny-model speed: 1024x1024 image-to-image at default settings, batch 1 and 4, on the CPU.

Run with ``make bench``. The target (core issue) is batch 1 within 8 s on 2 CPU cores.
Each figure is the median of several timed runs after one warm-up run, measured
through the same worker code a job uses (PipelineCache + run_img2img).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from shared.models import GenerationParams
from shared.registry import load_registry
from shared.settings import Settings
from worker.images import prepare_image
from worker.pipelines import PipelineCache, run_img2img

TARGET_S = 8.0
RUNS = 3


def main() -> None:
    import torch

    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    model_dir = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    cache = PipelineCache(Settings(model_dir=model_dir))
    registry = load_registry()
    source = Image.effect_mandelbrot((1024, 1024), (-2.0, -1.5, 1.0, 1.5), 100).convert("RGB")
    rows = []
    for app_id in ("tiny-sd", "tiny-sdxl"):
        spec = registry.get(app_id)
        started = time.perf_counter()
        pipe, _ = cache.get(spec)
        cold_load = time.perf_counter() - started
        for batch in (1, 4):
            params = GenerationParams(
                app_id=app_id, prompt="a beautiful painting", guidance_scale=7.5, batch=batch,
                strength=0.7, height=1024, width=1024,
            )  # fmt: skip
            image = prepare_image(_png(source), spec.family, 1024, 1024)
            seeds = list(range(batch))
            run_img2img(pipe, spec, image, params, seeds)  # warm-up
            times = []
            for _ in range(RUNS):
                started = time.perf_counter()
                outputs = run_img2img(pipe, spec, image, params, seeds)
                times.append(time.perf_counter() - started)
            assert outputs[0].size == (1024, 1024)
            rows.append({
                "app_id": app_id, "batch": batch, "size": "1024x1024",
                "steps": spec.default_steps, "median_s": round(statistics.median(times), 3),
                "per_image_s": round(statistics.median(times) / batch, 3),
                "cold_load_s": round(cold_load, 3), "threads": threads,
            })  # fmt: skip
    print(f"{'model':<10} {'batch':>5} {'median s':>9} {'s/image':>8} {'vs 8 s target':>14}")
    for row in rows:
        ratio = row["median_s"] / TARGET_S if row["batch"] == 1 else float("nan")
        print(
            f"{row['app_id']:<10} {row['batch']:>5} {row['median_s']:>9.2f} "
            f"{row['per_image_s']:>8.2f} {ratio:>14.2f}"
        )
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps({"tiny_models": rows}, indent=2))
    print(f"wrote {out}")


def _png(image: Image.Image) -> bytes:
    from worker.images import encode_png

    return encode_png(image)


if __name__ == "__main__":
    main()
