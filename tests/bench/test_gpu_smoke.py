"""bench/gpu.py: its smoke run covers every row, the g(b) rows through the worker's batched
path included, and its shipped configs are the real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench.gpu import (
    BATCHES,
    CONFIGS,
    GAIN_BATCHES,
    MODELS,
    VARIANTS,
    fill_gains,
    load_configs,
    shrink_configs,
)

ROOT = Path(__file__).resolve().parents[2]


def parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu") / "smoke.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_smoke_run_times_every_model_variant_and_batch(smoke_report: dict[str, Any]) -> None:
    rows = {(r["model"], r["variant"], r["batch"]): r for r in smoke_report["rows"]}
    assert set(rows) == {(m, v, b) for m in MODELS for v in VARIANTS for b in BATCHES}
    for row in rows.values():
        assert "skipped" not in row
        assert row["median_s"] > 0 and row["per_image_s"] > 0 and row["it_per_s"] > 0
        # strength 1.0 keeps every step; SD 1.5's PNDM scheduler runs one more UNet call
        extra = 1 if row["model"] == "sd15" else 0
        assert row["denoising_steps"] == row["steps"] + extra == 2 + extra
    assert smoke_report["smoke"] is True and smoke_report["dtype"] == "float32"


def test_smoke_run_times_one_and_two_jobs_through_the_batched_path(
    smoke_report: dict[str, Any],
) -> None:
    gains = {(r["model"], r["jobs"]): r for r in smoke_report["gains"]}
    assert set(gains) == {(m, b) for m in MODELS for b in GAIN_BATCHES[:2]}
    for (model, jobs), row in gains.items():
        assert "skipped" not in row, row["skipped"]
        assert row["images"] == jobs and row["images_per_s"] > 0 and row["gain"] > 0
        extra = 1 if model == "sd15" else 0  # PNDM's extra UNet call, as above
        assert row["denoising_steps"] == row["steps"] + extra == 2 + extra
        assert gains[(model, 1)]["gain"] == 1


def test_gain_is_images_per_second_over_the_one_job_rows_per_model() -> None:
    rows: list[dict[str, Any]] = [
        {"model": "sd15", "jobs": 1, "images_per_s": 2.0},
        {"model": "sd15", "jobs": 4, "images_per_s": 4.1},
        {"model": "sd15", "jobs": 8, "skipped": "time budget of 420 s spent"},
        {"model": "sdxl", "jobs": 2, "images_per_s": 1.0},  # no one-job row: no gain
    ]
    fill_gains(rows, "sd15")
    fill_gains(rows, "sdxl")
    assert [row.get("gain") for row in rows] == [1.0, 2.05, None, None]


def test_smoke_compiles_the_unet_once_per_shape_and_never_while_timed(
    smoke_report: dict[str, Any],
) -> None:
    assert smoke_report["compile_backend"] == "eager"  # Dynamo's full-graph trace, no codegen
    for row in smoke_report["rows"]:
        warmup = 1 if row["variant"] == "+compile" else 0  # batch 1 and 4: one graph each
        assert row["graphs_compiled"] == {"warmup": warmup, "timed": 0}


def test_shipped_unet_and_vae_configs_are_the_real_architectures() -> None:
    expected = {"sd15": (859_520_964, 768), "sdxl": (2_567_463_684, 2048)}
    for model, (unet_size, cross_attention_dim) in expected.items():
        with init_empty_weights():  # meta tensors: counts parameters without allocating them
            unet_config = UNet2DConditionModel.load_config(CONFIGS / model / "unet")
            unet = UNet2DConditionModel.from_config(unet_config)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / model / "vae"))
        assert parameters(unet) == unet_size  # the published parameter counts
        assert parameters(vae) == 83_653_863
        assert unet.config.cross_attention_dim == cross_attention_dim
        assert next(unet.parameters()).device.type == "meta"
    sdxl = load_configs("sdxl")
    assert sdxl["unet"]["block_out_channels"] == [320, 640, 1280]
    assert sdxl["unet"]["transformer_layers_per_block"] == [1, 2, 10]
    assert sdxl["unet"]["addition_embed_type"] == "text_time"
    assert sdxl["vae"]["force_upcast"] is True
    assert load_configs("sd15")["unet"]["block_out_channels"] == [320, 640, 1280, 1280]


def test_shipped_text_encoder_configs_are_clip_l_and_bigg() -> None:
    sdxl = load_configs("sdxl")
    with init_empty_weights():
        clip_l = CLIPTextModel(CLIPTextConfig.from_dict(load_configs("sd15")["text_encoder"]))
        bigg = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(sdxl["text_encoder_2"]))
    assert parameters(clip_l) == 123_060_480
    assert parameters(bigg) == 694_659_840
    sd15_clip_l = load_configs("sd15")["text_encoder"]
    assert sdxl["text_encoder"] == {**sd15_clip_l, "torch_dtype": "float16"}  # the same CLIP-L
    assert (bigg.config.hidden_size, bigg.config.projection_dim) == (1280, 1280)
    assert load_configs("sd15")["scheduler"]["_class_name"] == "PNDMScheduler"
    assert sdxl["scheduler"]["_class_name"] == "EulerDiscreteScheduler"


@pytest.mark.parametrize("model", list(MODELS))
def test_smoke_configs_keep_the_architecture_and_shrink_it(model: str) -> None:
    real, small = load_configs(model), shrink_configs(load_configs(model))
    assert small["unet"]["down_block_types"] == real["unet"]["down_block_types"]
    assert small["unet"].get("addition_embed_type") == real["unet"].get("addition_embed_type")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(small["unet"])
    assert parameters(unet) < 2_000_000
