"""The model registry: built-in entries, custom files, and who may run what."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.errors import InvalidRequest, UnknownApp
from shared.models import InferenceType
from shared.registry import ModelFamily, ModelSpec, effective_steps, load_registry


def test_builtin_registry_has_tiny_and_production_models() -> None:
    registry = load_registry()
    assert registry.get("tiny-sd").family is ModelFamily.SD
    assert registry.get("tiny-sdxl").source == "builtin:tiny-sdxl"
    assert registry.get("sdxl").inference_types == [InferenceType.A100, InferenceType.H100]


def test_unknown_app_names_the_field() -> None:
    with pytest.raises(UnknownApp, match="app_id: unknown model 'nope'"):
        load_registry().get("nope")


def test_gpu_class_not_allowed_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="inference_type: 'sdxl' runs only on a100, h100"):
        load_registry().check_runnable("sdxl", InferenceType.A10G)


def test_custom_registry_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[house-style]\nfamily = "sdxl"\nsource = "s3://models/house-style"\n'
        'dtype = "bfloat16"\ndefault_steps = 25\ninference_types = ["h100"]\n'
    )
    spec = load_registry(path).get("house-style")
    assert (spec.family, spec.dtype, spec.default_steps) == (ModelFamily.SDXL, "bfloat16", 25)


def test_invalid_registry_entry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[x]\nfamily = "kandinsky"\nsource = "a/b"\ninference_types = ["a10g"]\n')
    with pytest.raises(ValidationError, match="family"):
        load_registry(path)


def test_speed_settings_default_to_plain_sdpa_without_compile(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[m]\nfamily = "sd"\nsource = "a/b"\ninference_types = ["h100"]\n')
    spec = load_registry(path).get("m")
    assert (spec.attention, spec.channels_last, spec.compile) == ("sdpa", False, False)
    assert (spec.vae_tiling_above, spec.compile_sizes, spec.vram_gb) == (1024, [], 0.0)
    assert spec.compile_mode == "max-autotune-no-cudagraphs"


def test_builtin_production_models_declare_their_speed_settings() -> None:
    sdxl = load_registry().get("sdxl")
    assert sdxl.channels_last and sdxl.compile_sizes == [(1024, 1024)] and sdxl.vram_gb > 6
    assert load_registry().get("tiny-sd").vram_gb < 1


def test_speed_settings_are_read_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[m]\nfamily = "sdxl"\nsource = "a/b"\ninference_types = ["h100"]\n'
        'attention = "eager"\nchannels_last = true\nvae_tiling_above = 768\ncompile = true\n'
        'compile_mode = "reduce-overhead"\ncompile_sizes = [[1024, 1024], [768, 1344]]\n'
        "vram_gb = 12.5\n"
    )
    spec = load_registry(path).get("m")
    assert spec.compile_sizes == [(1024, 1024), (768, 1344)]
    assert (spec.attention, spec.vae_tiling_above, spec.vram_gb) == ("eager", 768, 12.5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("compile = true\n", "compile_sizes: list the"),
        ("compile_sizes = [[1000, 1024]]\n", "not a multiple of 64"),
        ('attention = "xformers"\n', "attention"),
        ("vram_gb = -1\n", "vram_gb"),
    ],
)
def test_invalid_speed_settings_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[m]\nfamily = "sd"\nsource = "a/b"\ninference_types = ["h100"]\n' + extra)
    with pytest.raises(ValidationError, match=message):
        load_registry(path)


@pytest.mark.parametrize(("strength", "steps"), [(1.0, 10), (0.5, 10), (0.05, 20), (0.001, 1000)])
def test_at_least_one_denoising_step_survives_strength(strength: float, steps: int) -> None:
    assert effective_steps(10, strength) == steps
    assert int(steps * strength) >= 1


def test_a_vanishing_strength_is_a_huge_step_count_not_an_overflow() -> None:
    assert effective_steps(10, 5e-324) == 2**31


def test_max_steps_defaults_to_four_times_default_steps_and_bounds_strength() -> None:
    spec = load_registry().get("tiny-sd")
    assert spec.step_cap == 40
    assert spec.steps_for(0.7) == 10 and spec.steps_for(0.025) == 40
    assert spec.steps_for(0.024) is None and spec.steps_for(1e-9) is None


def test_max_steps_below_default_steps_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_steps"):
        ModelSpec(
            app_id="x", family="sd", source="s", default_steps=30, max_steps=10,
            inference_types=["a10g"],
        )  # fmt: skip
