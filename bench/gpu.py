"""GPU speed of SD 1.5 and SDXL image-to-image: fp16 + SDPA, then channels_last, then compile;
and the gain g(b) of batching b jobs into one call of the worker's batched path.

    python -m bench.gpu [--out bench/gpu_results.json]   # one H100/H200, from the repo root
    python -m bench.gpu --only gain                      # the g(b) rows alone
    python -m bench.gpu --smoke --out /tmp/smoke.json    # CPU, scaled-down, a few seconds

Both pipelines are built from the real configs in ``bench/configs/`` with random weights, so
nothing downloads: random weights cost the same FLOPs as trained ones. The tokenizer is the
byte-level one of ``worker/tiny_models.py`` (copied here, since the GPU machine has only
torch, transformers and diffusers: the variant rows import nothing else from the
repository). The g(b) rows call ``worker.pipelines.run_img2img``, so they need the
repository on the path (``-m`` from its root) and pydantic, which ``bench/gpu.sh`` installs
from ``bench/wheels/``; without them those rows are skipped and say why.

What is timed: one ``pipe(...)`` call per run, as the worker makes it (``inference_mode``,
``num_images_per_prompt=batch``, ``output_type="pil"``, guidance 7.5 so the UNet runs the
doubled CFG batch), at strength 1.0 so all 30 steps denoise; VAE encode and decode included.
A warm-up call of a few steps precedes each row and is not timed (it absorbs compilation).
Each variant adds to the one before: "sdpa" (AttnProcessor2_0 in fp16), "+channels_last"
(UNet and VAE in NHWC), "+compile" (UNet through torch.compile, static shapes).
``--smoke`` compiles with the "eager" backend: Dynamo still traces the whole UNet with
``fullgraph=True`` (a graph break or a recompile fails the smoke test), but the graph runs
as plain PyTorch ops, so the CPU spends seconds, not minutes, on code generation.

Compile mode defaults to "reduce-overhead": it compiles in about a minute per shape, and its
CUDA graphs remove the launch cost of the UNet's ~1000 kernels per step, which matters most
at batch 1. "max-autotune-no-cudagraphs" (the worker's default, paid once at load) spends
minutes per shape autotuning; try it with ``--compile-mode`` and ``--models sdxl``.
SDXL's real VAE config has ``force_upcast``, so its VAE runs in float32 as in production.

g(b) = (images/s with b jobs in one call) / (images/s with one job), b = 1, 2, 4, 8: b
distinct batch-1 jobs (own prompt, input and seed) as ``BatchItem``s of one
``run_img2img`` call, exactly as worker/batcher.py groups them. They run on the
"+channels_last" pipeline, eager: the published gains it is compared with are eager, and a
compiled UNet would need a graph per b. Each b is warmed up once, untimed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).with_name("configs")
MODELS = {"sd15": 512, "sdxl": 1024}  # native size of each
VARIANTS = ("sdpa", "+channels_last", "+compile")
BATCHES = (1, 4)
GAIN_VARIANT = "+channels_last"  # the pipeline the g(b) rows time: eager, see above
GAIN_BATCHES = (1, 2, 4, 8)  # jobs per call, one image each (smoke: 1 and 2)
PARTS = ("variants", "gain")
STEPS = 30
PROMPT = "a photograph of an astronaut riding a horse, golden hour, highly detailed"


def main() -> None:
    args = parse_args()
    import torch

    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.float16)
    report: dict[str, Any] = {
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "compile_mode": args.compile_mode,
        "compile_backend": args.compile_backend,
        "steps": args.steps,
        "rows": [],
        "gains": [],
    }
    no_worker = worker_path_missing() if "gain" in args.only else None
    for model in args.models:
        pipe = build_pipeline(model, args.smoke, device, dtype)
        time_model(report, pipe, model, args, no_worker)
        del pipe
        _free(device)
    print_table(report)
    print(f"wrote {args.out}; elapsed {report['elapsed_s']:.1f} s")


def time_model(
    report: dict[str, Any], pipe: Any, model: str, args: argparse.Namespace, no_worker: str | None
) -> None:
    """Each variant's rows on one pipeline, and the g(b) rows once it is at GAIN_VARIANT."""
    size = 64 if args.smoke else MODELS[model]
    for variant in VARIANTS:
        apply_variant(pipe, variant, args)
        for batch in BATCHES if "variants" in args.only else ():
            row = {"model": model, "variant": variant, "batch": batch, "size": size}
            record(report, "rows", row, partial(measure, pipe, size, batch, args), args)
        if variant == GAIN_VARIANT and "gain" in args.only:
            for jobs in GAIN_BATCHES[:2] if args.smoke else GAIN_BATCHES:
                row = {"model": model, "jobs": jobs, "size": size}
                timing = partial(measure_gain, pipe, model, size, jobs, args)
                record(report, "gains", row, timing, args, no_worker)
            fill_gains(report["gains"], model)
            _write(args.out, report)
            if "variants" not in args.only:
                return  # nothing left to time on this model


def record(
    report: dict[str, Any],
    key: str,
    row: dict[str, Any],
    timing: Callable[[], dict[str, Any]],
    args: argparse.Namespace,
    skipped: str | None = None,
) -> None:
    """Time one row into ``report[key]``, unless it is skipped or the time budget is spent."""
    elapsed = time.perf_counter() - args.started
    if skipped is None and elapsed > args.budget_s:
        skipped = f"time budget of {args.budget_s:.0f} s spent"
    row |= timing() if skipped is None else {"skipped": skipped}
    report[key].append(row)
    report["elapsed_s"] = round(time.perf_counter() - args.started, 1)
    _print_row(row, report["elapsed_s"])
    _write(args.out, report)  # after every row: a killed run keeps what it had


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="scaled-down models on the CPU")
    parser.add_argument("--out", type=Path, default=Path("bench/gpu_results.json"))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["sdxl", "sd15"])
    parser.add_argument("--compile-mode", default="reduce-overhead", help="inductor only")
    parser.add_argument("--compile-backend", default=None, help="default inductor (smoke: eager)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no row after this")
    parser.add_argument("--steps", type=int, default=None, help="default 30 (smoke: 2)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row")
    parser.add_argument("--only", choices=PARTS, help="one part: the variant or the g(b) rows")
    args = parser.parse_args()
    args.started = time.perf_counter()
    args.only = PARTS if args.only is None else (args.only,)
    args.steps = args.steps or (2 if args.smoke else STEPS)
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    return args


# 1. Configs: the real ones, or scaled-down copies derived from them for --smoke.


def load_configs(model: str) -> dict[str, dict[str, Any]]:
    """Each component's shipped config, by component folder name."""
    configs = {}
    for folder in sorted((CONFIGS / model).iterdir()):
        name = "scheduler_config.json" if folder.name == "scheduler" else "config.json"
        configs[folder.name] = json.loads((folder / name).read_text())
    return configs


def shrink_configs(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The same architecture, about 1/20 as wide and 1-2 layers deep, for the CPU."""
    small = copy.deepcopy(configs)
    for name in ("text_encoder", "text_encoder_2"):
        if name in small:
            text = small[name]
            width = max(16, text["hidden_size"] // 20 // 16 * 16)  # 768 -> 32, 1280 -> 64
            text.update(hidden_size=width, intermediate_size=4 * width, projection_dim=width)
            text.update(num_hidden_layers=2, num_attention_heads=2)
    unet = small["unet"]
    unet["block_out_channels"] = [max(16, c // 20) for c in unet["block_out_channels"]]
    heads = unet["attention_head_dim"]  # SD 1.5 names its head count so (legacy)
    unet["attention_head_dim"] = [max(1, h // 5) for h in heads] if isinstance(heads, list) else 2
    unet.update(layers_per_block=1, norm_num_groups=8)
    if unet.get("transformer_layers_per_block"):
        unet["transformer_layers_per_block"] = [1] * len(unet["block_out_channels"])
    widths = [small[n]["hidden_size"] for n in ("text_encoder", "text_encoder_2") if n in small]
    unet["cross_attention_dim"] = sum(widths)  # SDXL concatenates both encoders' states
    if unet.get("addition_embed_type") == "text_time":
        unet["addition_time_embed_dim"] = 8  # 6 size/crop numbers + the pooled projection
        unet["projection_class_embeddings_input_dim"] = (
            6 * 8 + small["text_encoder_2"]["projection_dim"]
        )
    vae = small["vae"]
    vae["block_out_channels"] = [c // 16 for c in vae["block_out_channels"]]
    vae.update(layers_per_block=1, norm_num_groups=8)
    return small


# 2. Pipelines, built from configs with random weights on the target device.


def build_pipeline(model: str, smoke: bool, device: str, dtype: Any) -> Any:
    """An img2img pipeline of the model's architecture with random weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    configs = load_configs(model)
    if smoke:
        configs = shrink_configs(configs)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: SDXL's 2.6B parameters init in seconds
        unet = UNet2DConditionModel.from_config(configs["unet"]).to(dtype)
        vae = AutoencoderKL.from_config(configs["vae"]).to(dtype)
        text_encoder = _text_encoder(configs["text_encoder"], projection=False).to(dtype)
        if model == "sd15":
            pipe = StableDiffusionImg2ImgPipeline(
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=byte_tokenizer(),
                unet=unet,
                scheduler=_scheduler(configs["scheduler"]),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionXLImg2ImgPipeline(
                vae=vae,
                text_encoder=text_encoder,
                text_encoder_2=_text_encoder(configs["text_encoder_2"], projection=True).to(dtype),
                tokenizer=byte_tokenizer(),
                tokenizer_2=byte_tokenizer(),
                unet=unet,
                scheduler=_scheduler(configs["scheduler"]),
                requires_aesthetics_score=False,
                force_zeros_for_empty_prompt=True,
            )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _text_encoder(config: dict[str, Any], projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model_class = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model_class(CLIPTextConfig.from_dict(config)).eval()


def _scheduler(config: dict[str, Any]) -> Any:
    import diffusers

    return getattr(diffusers, config["_class_name"]).from_config(config)


def byte_vocab() -> dict[str, int]:
    """A CLIP vocabulary of single byte-level symbols: every prompt tokenizes, no merges.

    Copied from worker/tiny_models.py: its ids stay below the real 49408-entry embedding.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    symbols = [chr(c) for c in codes]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in symbols:
            vocab[symbol + suffix] = len(vocab)
    return vocab


def byte_tokenizer() -> Any:
    """A CLIPTokenizer over ``byte_vocab``: 77 tokens per prompt, as the real ones."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=77)


# 3. Variants, each on top of the one before; then the timing itself.


def apply_variant(pipe: Any, variant: str, args: argparse.Namespace) -> None:
    """Change the pipeline in place for one variant."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    if variant == "sdpa":
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
    elif variant == "+channels_last":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    elif variant == "+compile":
        # static shapes: batch 1 and 4 are two graphs, each compiled in its row's warm-up
        backend = args.compile_backend
        mode = {"mode": args.compile_mode} if backend == "inductor" else {}
        pipe.unet = torch.compile(pipe.unet, backend=backend, fullgraph=True, dynamic=False, **mode)


def measure(pipe: Any, size: int, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up (untimed), then time whole pipeline calls; seconds per image and peak memory."""
    import torch
    from PIL import Image

    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    cuda = torch.cuda.is_available() and not args.smoke
    calls: list[int] = []

    def run(steps: int) -> float:
        def count(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> Any:
            calls.append(step)
            return tensors

        calls.clear()
        if cuda:
            torch.cuda.synchronize()
        begun = time.perf_counter()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # random weights may give NaN pixels
            warnings.simplefilter("ignore", FutureWarning)  # one image for a batch, as the worker
            pipe(
                prompt=PROMPT,
                image=image,
                strength=1.0,
                guidance_scale=7.5,
                num_inference_steps=steps,
                num_images_per_prompt=batch,
                generator=torch.Generator("cpu").manual_seed(0),
                output_type="pil",
                callback_on_step_end=count,
            )
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - begun

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = _graphs()
    warmup_s = run(min(3, args.steps))  # 3 UNet calls: compiles, then records CUDA graphs
    warmed = _graphs()
    runs = args.runs or (1 if args.smoke else 3 if batch == 1 else 2)
    times = [run(args.steps) for _ in range(runs)]
    median = statistics.median(times)
    return {
        "steps": args.steps,
        "denoising_steps": len(calls),
        "runs": runs,
        "warmup_s": round(warmup_s, 3),
        "median_s": round(median, 4),
        "per_image_s": round(median / batch, 4),
        "it_per_s": round(len(calls) / median, 2),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        # Dynamo graphs: one per new shape in the warm-up; any while timed is a recompile
        "graphs_compiled": {"warmup": warmed - before, "timed": _graphs() - warmed},
    }


def _graphs() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def worker_path_missing() -> str | None:
    """Why the worker's batched path cannot be imported here, or None when it can."""
    try:
        import worker.pipelines  # noqa: F401
    except ImportError as exc:
        return (
            f"worker.pipelines not importable ({exc}): run python -m bench.gpu from the "
            "repository root, with pydantic's wheels in bench/wheels (see bench/gpu.sh)"
        )
    return None


def measure_gain(
    pipe: Any, model: str, size: int, jobs: int, args: argparse.Namespace
) -> dict[str, Any]:
    """``jobs`` batch-1 jobs in one ``run_img2img`` call: warm up once, then time calls."""
    import torch

    from worker.pipelines import run_img2img

    cuda = torch.cuda.is_available() and not args.smoke
    items = gain_items(size, jobs)
    calls: list[int] = []

    def run(steps: int) -> float:
        spec = gain_spec(model, steps)
        calls.clear()
        if cuda:
            torch.cuda.synchronize()
        begun = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # random weights may give NaN pixels
            shares = run_img2img(pipe, spec, items, lambda step, _total: calls.append(step))
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - begun
        assert [len(images) for images in shares] == [1] * jobs, "one image per job"
        return elapsed

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup_s = run(min(3, args.steps))
    runs = args.runs or (1 if args.smoke else 3 if jobs <= 2 else 2)
    median = statistics.median(run(args.steps) for _ in range(runs))
    return {
        "images": jobs,
        "steps": args.steps,
        "denoising_steps": len(calls),
        "runs": runs,
        "warmup_s": round(warmup_s, 3),
        "median_s": round(median, 4),
        "per_image_s": round(median / jobs, 4),
        "images_per_s": round(jobs / median, 4),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def gain_spec(model: str, steps: int) -> Any:
    """A registry entry for the bench pipeline: ``steps`` steps at strength 1.0."""
    from shared.models import InferenceType
    from shared.registry import ModelFamily, ModelSpec

    family = ModelFamily.SD if model == "sd15" else ModelFamily.SDXL
    return ModelSpec(
        app_id=f"bench-{model}", family=family, source=str(CONFIGS / model),
        default_steps=steps, inference_types=[InferenceType.H100],
    )  # fmt: skip


def gain_items(size: int, jobs: int) -> list[Any]:
    """``jobs`` compatible batch-1 jobs, each with its own prompt, input image and seed."""
    from PIL import Image

    from shared.models import GenerationParams
    from worker.pipelines import BatchItem

    items = []
    for job in range(jobs):
        params = GenerationParams(
            app_id="bench", prompt=f"{PROMPT}, take {job + 1}", guidance_scale=7.5, batch=1,
            strength=1.0, height=size, width=size, seed=job,
        )  # fmt: skip
        image = Image.linear_gradient("L").rotate(45 * job).resize((size, size)).convert("RGB")
        items.append(BatchItem(params=params, image=image, seeds=[job]))
    return items


def fill_gains(rows: list[dict[str, Any]], model: str) -> None:
    """g(b) on each of a model's timed rows: its images/s over the one-job row's."""
    timed = {r["jobs"]: r for r in rows if r["model"] == model and "skipped" not in r}
    if 1 not in timed:
        return
    for row in timed.values():
        row["gain"] = round(row["images_per_s"] / timed[1]["images_per_s"], 3)


# 4. Reporting.


def print_table(report: dict[str, Any]) -> None:
    """One line per model, variant and batch."""
    print(f"\n{report['device']}  {report['dtype']}  torch {report['torch']}")
    mode = f", mode {report['compile_mode']}" if report["compile_backend"] == "inductor" else ""
    print(f"diffusers {report['diffusers']}  compile backend {report['compile_backend']}{mode}")
    header = f"{'model':<6} {'variant':<15} {'batch':>5} {'size':>5} {'s/image':>8} "
    print(header + f"{'it/s':>7} {'peak GB':>8} {'warm-up s':>9}")
    for row in report["rows"]:
        _print_row(row, None)
    if report["gains"]:
        print(f"\ng(b), {GAIN_VARIANT}, through worker.pipelines.run_img2img")
        print(f"{'model':<6} {'jobs':>5} {'size':>5} {'images/s':>9} {'g(b)':>6} {'peak GB':>8}")
    for row in report["gains"]:
        _print_row(row, None)


def _print_row(row: dict[str, Any], elapsed: float | None) -> None:
    if "jobs" in row:
        _print_gain(row, elapsed)
        return
    line = f"{row['model']:<6} {row['variant']:<15} {row['batch']:>5} {row['size']:>5} "
    if "skipped" in row:
        line += f"skipped: {row['skipped']}"
    else:
        peak = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f}"
        line += f"{row['per_image_s']:>8.3f} {row['it_per_s']:>7.2f} {peak:>8} "
        line += f"{row['warmup_s']:>9.1f}"
    print(line + ("" if elapsed is None else f"   [{elapsed:.0f} s]"), flush=True)


def _print_gain(row: dict[str, Any], elapsed: float | None) -> None:
    line = f"{row['model']:<6} {row['jobs']:>5} {row['size']:>5} "
    if "skipped" in row:
        line += f"skipped: {row['skipped']}"
    else:
        gain = "-" if row.get("gain") is None else f"{row['gain']:.2f}"
        peak = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f}"
        line += f"{row['images_per_s']:>9.3f} {gain:>6} {peak:>8}"
    print(line + ("" if elapsed is None else f"   [{elapsed:.0f} s]"), flush=True)


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch._dynamo.reset()  # drop compiled graphs (and their CUDA graph pools)
        torch.cuda.empty_cache()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
