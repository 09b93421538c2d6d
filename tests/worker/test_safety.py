"""The safety checker: the tiny one generated deterministically and loaded offline, one
forward pass per batch, the threshold override, diffusers' own verdict, and the policies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.errors import ModelError
from shared.registry import load_registry
from shared.settings import Settings
from worker.safety import (
    SafetyChecker,
    SafetyCheckers,
    apply_policy,
    check,
    load_checker,
)
from worker.tiny_models import ensure_tiny_model

TINY = "builtin:tiny-safety"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(model_dir=tmp_path_factory.mktemp("models"), torch_threads=1)


@pytest.fixture
def checker(settings: Settings) -> SafetyChecker:
    """A checker of this test's own, so a test may wrap or change its modules."""
    return load_checker(TINY, settings)


def noise(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def batch(count: int = 3) -> list[Image.Image]:
    """Noise and flat images, so that the embeddings differ."""
    flat = [Image.new("RGB", (64, 64), (40 * i, 200 - 40 * i, 90)) for i in range(count)]
    return [noise(i) for i in range(count)] + flat


def test_tiny_checker_is_generated_deterministically(tmp_path: Path) -> None:
    first = ensure_tiny_model("tiny-safety", tmp_path / "a")
    second = ensure_tiny_model("tiny-safety", tmp_path / "b")
    names = sorted(path.name for path in first.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert sorted(path.name for path in second.iterdir()) == names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_tiny_checker_loads_through_from_pretrained_offline(checker: SafetyChecker) -> None:
    assert type(checker.model).__name__ == "StableDiffusionSafetyChecker"
    assert type(checker.processor).__name__.startswith("CLIPImageProcessor")
    assert checker.processor.crop_size == {"height": 32, "width": 32}
    # The generated concepts, not the class's all-ones start: the saved weights loaded.
    assert not bool((checker.model.concept_embeds == 1).all())
    assert checker.device == "cpu"


def test_a_checker_that_cannot_load_is_a_model_error(settings: Settings) -> None:
    with pytest.raises(ModelError, match="safety checker 'no-such/checker' failed to load"):
        load_checker("no-such/checker", settings)  # the Hub is off in tests


def test_checkers_load_once_per_source_and_are_shared(settings: Settings) -> None:
    loads: list[str] = []

    def load(source: str, settings: Settings) -> SafetyChecker:
        loads.append(source)
        return SafetyChecker(model=object(), processor=object(), device="cpu", dtype=None)

    checkers = SafetyCheckers(load=load)
    first, _ = checkers.get("a/checker", settings)
    again, load_s = checkers.get("a/checker", settings)
    checkers.get("b/checker", settings)
    assert again is first and load_s == 0.0
    assert loads == ["a/checker", "b/checker"]
    assert checkers.loaded() == ["a/checker", "b/checker"]


def test_the_tiny_models_use_the_tiny_checker() -> None:
    registry = load_registry()
    assert registry.get("tiny-sd").safety_checker == TINY
    assert registry.get("tiny-sdxl").safety_checker == TINY
    assert registry.get("sd15").safety_checker == "CompVis/stable-diffusion-safety-checker"


@pytest.mark.parametrize(("threshold", "expected"), [(-1.0, True), (2.0, False)])
def test_the_threshold_override_decides_every_image(
    checker: SafetyChecker, threshold: float, expected: bool
) -> None:
    images = batch()
    assert check(checker, images, threshold) == [expected] * len(images)


def test_the_override_ignores_every_concepts_own_threshold(checker: SafetyChecker) -> None:
    """Thresholds of 5 would flag nothing; the override of -1 still flags everything."""
    model = checker.model
    model.concept_embeds_weights.data.fill_(5.0)
    model.special_care_embeds_weights.data.fill_(-5.0)  # would add the 0.01 adjustment
    images = batch()
    assert check(checker, images, None) == [False] * len(images)
    assert check(checker, images, -1.0) == [True] * len(images)
    assert check(checker, images, 2.0) == [False] * len(images)


def test_without_override_the_checkers_own_thresholds_decide(checker: SafetyChecker) -> None:
    flags = check(checker, batch(), None)
    assert len(flags) == 6 and all(isinstance(flag, bool) for flag in flags)


def test_the_default_verdict_is_diffusers_own(checker: SafetyChecker) -> None:
    """Same flags as StableDiffusionSafetyChecker.forward, with the thresholds moved so
    that every image, some or none pass."""
    model = checker.model
    images = batch()
    pixels = checker.processor(images, return_tensors="pt").pixel_values
    placeholders = [np.zeros((2, 2, 3)) for _ in images]
    verdicts = []
    for shift in (-0.1, 0.08, 0.1, 0.4):  # cumulative: -0.1, -0.02, 0.08, 0.48
        model.concept_embeds_weights.data += shift
        model.special_care_embeds_weights.data += shift
        _, expected = model(clip_input=pixels, images=placeholders)
        assert check(checker, images, None) == expected, shift
        verdicts.append(expected)
    assert any(len(set(flags)) == 2 for flags in verdicts), verdicts  # a mixed batch


def test_one_forward_pass_checks_the_whole_batch(checker: SafetyChecker) -> None:
    vision = checker.model.vision_model
    calls: list[int] = []
    forward: Callable[..., Any] = vision.forward

    def counting(pixel_values: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(pixel_values.shape[0])
        return forward(pixel_values, *args, **kwargs)

    vision.forward = counting
    flags = check(checker, [noise(1), noise(2), noise(3)], -1.0)
    assert calls == [3]
    assert flags == [True, True, True]


def pixels(image: Image.Image) -> np.ndarray[Any, Any]:
    return np.asarray(image, dtype=np.float64)


def test_block_replaces_flagged_images_with_black_ones() -> None:
    images = [noise(1, (128, 96)), noise(2, (128, 96))]
    treated = apply_policy(images, [True, False], "block")
    assert treated[0].size == (128, 96) and treated[0].mode == "RGB"
    assert not pixels(treated[0]).any()  # every pixel 0
    assert treated[1] is images[1]  # an unflagged image passes as it is


def test_blur_leaves_only_a_smear_of_a_flagged_image() -> None:
    images = [noise(1, (128, 96)), noise(2, (128, 96))]
    treated = apply_policy(images, [True, False], "blur")
    assert treated[0].size == (128, 96)
    assert pixels(treated[0]).var() < 0.02 * pixels(images[0]).var()
    assert treated[1] is images[1]


def test_flag_leaves_flagged_images_unchanged() -> None:
    images = [noise(1), noise(2)]
    treated = apply_policy(images, [True, True], "flag")
    assert all((pixels(a) == pixels(b)).all() for a, b in zip(treated, images, strict=True))
