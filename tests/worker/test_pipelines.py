"""The tiny models: generated deterministically, loaded through from_pretrained, reproducible."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from shared.models import GenerationParams
from shared.registry import load_registry
from shared.settings import Settings
from worker.images import encode_png
from worker.pipelines import PipelineCache, effective_steps, run_img2img
from worker.tiny_models import ensure_tiny_model


def weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PipelineCache:
    return PipelineCache(Settings(model_dir=tmp_path_factory.mktemp("models"), torch_threads=1))


def params(**overrides: object) -> GenerationParams:
    fields: dict[str, object] = {
        "app_id": "tiny-sd",
        "prompt": "a red barn",
        "guidance_scale": 7.5,
        "batch": 2,
        "strength": 0.5,
        "height": 512,
        "width": 512,
        **overrides,
    }
    return GenerationParams.model_validate(fields)


def test_tiny_models_are_generated_deterministically(tmp_path: Path) -> None:
    first = ensure_tiny_model("tiny-sd", tmp_path / "a")
    second = ensure_tiny_model("tiny-sd", tmp_path / "b")
    assert weights_digest(first) == weights_digest(second) != hashlib.sha256().hexdigest()


@pytest.mark.parametrize(
    ("app_id", "pipeline_class"),
    [
        ("tiny-sd", "StableDiffusionImg2ImgPipeline"),
        ("tiny-sdxl", "StableDiffusionXLImg2ImgPipeline"),
    ],
)
def test_tiny_models_load_through_from_pretrained(
    cache: PipelineCache, app_id: str, pipeline_class: str
) -> None:
    pipe, load_s = cache.get(load_registry().get(app_id))
    assert type(pipe).__name__ == pipeline_class
    assert load_s > 0
    assert cache.get(load_registry().get(app_id)) == (pipe, 0.0)  # cached: no second load


def test_same_seed_gives_identical_bytes_and_each_image_its_own_seed(cache: PipelineCache) -> None:
    spec = load_registry().get("tiny-sd")
    pipe, _ = cache.get(spec)
    image = Image.new("RGB", (128, 128), (200, 100, 50))
    first = [encode_png(i) for i in run_img2img(pipe, spec, image, params(), [7, 8])]
    again = [encode_png(i) for i in run_img2img(pipe, spec, image, params(), [7, 8])]
    other = [encode_png(i) for i in run_img2img(pipe, spec, image, params(), [9, 10])]
    assert first == again
    assert first[0] != first[1]
    assert first[0] != other[0]


@pytest.mark.parametrize(("strength", "steps"), [(1.0, 10), (0.5, 10), (0.05, 20), (0.001, 1000)])
def test_at_least_one_denoising_step_survives_strength(strength: float, steps: int) -> None:
    assert effective_steps(10, strength) == steps
    assert int(steps * strength) >= 1
