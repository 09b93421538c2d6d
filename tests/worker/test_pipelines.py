"""The tiny models: generated deterministically, loaded through from_pretrained, reproducible."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.errors import JobError, ModelError
from shared.models import GenerationParams
from shared.registry import ModelSpec, load_registry
from shared.settings import Settings
from worker.images import encode_png
from worker.pipelines import (
    BatchItem,
    PipelineCache,
    compile_unet,
    load_pipeline,
    run_img2img,
)
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


def run_one(
    pipe: Any, spec: ModelSpec, image: Image.Image, job: GenerationParams, seeds: list[int]
) -> list[Image.Image]:
    """One job's call through the worker's batched path, with no partners."""
    return run_img2img(pipe, spec, [BatchItem(job, image, seeds)])[0]


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
    first = [encode_png(i) for i in run_one(pipe, spec, image, params(), [7, 8])]
    again = [encode_png(i) for i in run_one(pipe, spec, image, params(), [7, 8])]
    other = [encode_png(i) for i in run_one(pipe, spec, image, params(), [9, 10])]
    assert first == again
    assert first[0] != first[1]
    assert first[0] != other[0]


@pytest.mark.parametrize("strength", [0.02, 1e-8, 5e-324])
def test_the_worker_refuses_a_strength_past_max_steps_before_touching_the_model(
    strength: float,
) -> None:
    spec = load_registry().get("tiny-sd")  # default_steps 10, max_steps 40
    image = Image.new("RGB", (64, 64))
    with pytest.raises(JobError, match=r"^strength: too small"):
        run_one(None, spec, image, params(strength=strength), [1])


def spec_of(entry: str, **overrides: object) -> ModelSpec:
    """A built-in registry entry with some fields changed."""
    return load_registry().get(entry).model_copy(update=overrides)


class FakeLoader:
    """Stands in for load_pipeline: records which models it loaded."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def __call__(self, spec: ModelSpec, _settings: Settings) -> object:
        self.loaded.append(spec.app_id)
        return object()


def test_vram_budget_evicts_least_recently_used_until_the_next_model_fits() -> None:
    loader = FakeLoader()
    cache = PipelineCache(Settings(device="cpu"), capacity=9, vram_budget_gb=20, load=loader)
    for app_id in ("a", "b", "c"):  # 6 + 6 + 6 GB fit in 20
        cache.get(spec_of("tiny-sd", app_id=app_id, vram_gb=6.0))
    cache.get(spec_of("tiny-sd", app_id="a", vram_gb=6.0))  # a is now the most recent
    cache.get(spec_of("tiny-sdxl", app_id="xl", vram_gb=12.0))  # needs b and c gone
    assert cache.loaded() == ["a", "xl"]
    assert loader.loaded == ["a", "b", "c", "xl"]


def test_without_a_budget_only_capacity_evicts() -> None:
    cache = PipelineCache(Settings(device="cpu"), capacity=2, load=FakeLoader())
    for app_id in ("a", "b", "c"):
        cache.get(spec_of("tiny-sd", app_id=app_id, vram_gb=500.0))
    assert cache.loaded() == ["b", "c"]


def test_a_model_larger_than_the_budget_is_a_model_error() -> None:
    cache = PipelineCache(Settings(device="cpu"), vram_budget_gb=10, load=FakeLoader())
    cache.get(spec_of("tiny-sd", app_id="small", vram_gb=4.0))
    with pytest.raises(ModelError, match=r"'big' needs about 16\.0 GB .* budget of 10"):
        cache.get(spec_of("sdxl", app_id="big", vram_gb=16.0))
    assert cache.loaded() == ["small"]  # nothing evicted for a model that can never fit


def test_eviction_on_cuda_empties_the_cuda_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    cache = PipelineCache(Settings(device="cuda"), vram_budget_gb=10, load=FakeLoader())
    cache.get(spec_of("tiny-sd", app_id="a", vram_gb=6.0))
    assert emptied == []
    cache.get(spec_of("tiny-sd", app_id="b", vram_gb=6.0))
    assert emptied == [True]


def test_without_a_setting_the_budget_is_most_of_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    class Properties:
        total_memory = 24 * 2**30  # an A10G

    asked: list[Any] = []
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: asked.append(device) or Properties
    )
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    cache = PipelineCache(Settings(device="cuda"), capacity=9, load=FakeLoader())
    assert asked == []  # nothing touches CUDA until a model loads (Celery forks first)
    cache.get(spec_of("tiny-sd", app_id="a", vram_gb=12.0))
    assert cache.vram_budget_gb == 21.6  # 90 % of 24 GB
    cache.get(spec_of("tiny-sd", app_id="b", vram_gb=12.0))  # 24 GB would not fit in 21.6
    assert cache.loaded() == ["b"] and len(asked) == 1


def test_on_cpu_without_a_setting_there_is_no_budget() -> None:
    cache = PipelineCache(Settings(device="cpu"), capacity=9, load=FakeLoader())
    for app_id in ("a", "b"):
        cache.get(spec_of("tiny-sd", app_id=app_id, vram_gb=500.0))
    assert cache.vram_budget_gb is None and cache.loaded() == ["a", "b"]


def test_loaded_pipelines_use_sdpa_attention(cache: PipelineCache) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe, _ = cache.get(load_registry().get("tiny-sdxl"))
    processors = pipe.unet.attn_processors.values()
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


def test_vae_tiles_only_above_the_specs_threshold(cache: PipelineCache) -> None:
    spec = load_registry().get("tiny-sd")
    pipe, _ = cache.get(spec)
    image = Image.new("RGB", (128, 128), (10, 20, 30))
    run_one(pipe, spec.model_copy(update={"vae_tiling_above": 64}), image, params(), [1, 2])
    assert pipe.vae.use_tiling
    run_one(pipe, spec, image, params(), [1, 2])  # default threshold 1024
    assert not pipe.vae.use_tiling


def test_compiled_unet_is_warmed_at_load_and_never_compiles_while_serving(
    tmp_path: Path,
) -> None:
    import torch

    graphs: list[object] = []

    def counting_backend(graph: torch.fx.GraphModule, _inputs: object) -> object:
        graphs.append(graph)
        return graph.forward

    spec = spec_of("tiny-sd", compile=True, compile_sizes=[(64, 64)])
    pipe = load_pipeline(spec, Settings(model_dir=tmp_path, device="cpu"))
    try:
        compile_unet(pipe, spec, backend=counting_backend)
        assert len(graphs) == 4  # 64x64 at batches 1-4 (max_batch is 4), static shapes
        run_one(pipe, spec, Image.new("RGB", (64, 64)), params(batch=3), [1, 2, 3])
        run_one(pipe, spec, Image.new("RGB", (128, 64)), params(batch=1), [1])  # not warmed
        assert len(graphs) == 4  # the warmed shape reused its graph; the other ran eager
    finally:
        torch._dynamo.reset()


# Weights load from safetensors only, unless the registry entry allows pickles


def pickled_copy(model_dir: Path, target: Path) -> Path:
    """tiny-sd with every .safetensors file re-saved as the pickled .bin diffusers and
    transformers also read: a model that ships only pickles."""
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled_name = {
        "model.safetensors": "pytorch_model.bin",  # transformers' text encoder
        "diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",  # UNet, VAE
    }
    shutil.copytree(ensure_tiny_model("tiny-sd", model_dir), target)
    for weights in list(target.rglob("*.safetensors")):
        torch.save(load_file(weights), weights.with_name(pickled_name[weights.name]))
        weights.unlink()
    return target


def test_a_model_with_only_pickled_weights_is_refused(tmp_path: Path) -> None:
    folder = pickled_copy(tmp_path / "models", tmp_path / "pickled")
    assert list(folder.rglob("*.bin")) and not list(folder.rglob("*.safetensors"))
    spec = spec_of("tiny-sd", app_id="pickled", source=str(folder))
    assert spec.allow_pickle is False  # the default
    with pytest.raises(ModelError, match=r"'pickled' failed to load .*safetensors"):
        load_pipeline(spec, Settings(model_dir=tmp_path / "models", device="cpu"))


def test_allow_pickle_loads_a_trusted_model_that_has_no_safetensors(tmp_path: Path) -> None:
    folder = pickled_copy(tmp_path / "models", tmp_path / "pickled")
    spec = spec_of("tiny-sd", app_id="pickled", source=str(folder), allow_pickle=True)
    pipe = load_pipeline(spec, Settings(model_dir=tmp_path / "models", device="cpu"))
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"


def test_no_builtin_model_allows_pickles() -> None:
    assert not [s.app_id for s in load_registry().specs.values() if s.allow_pickle]
