"""The model registry: built-in entries, custom files, and who may run what."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.errors import InvalidRequest, UnknownApp
from shared.models import InferenceType
from shared.registry import ModelFamily, load_registry


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
