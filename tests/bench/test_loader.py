"""The simulated pipeline (bench/loader.py): its cost model, and that it is called exactly as
worker/pipelines.py's run_img2img calls a diffusers pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench.loader import (
    PROFILES,
    CostModel,
    SimulatedPipe,
    gain,
    load_simulated,
    parse_source,
    steps_run,
)
from shared.errors import ModelError
from shared.models import GenerationParams
from shared.registry import ModelFamily, ModelSpec
from shared.settings import Settings
from worker.pipelines import BatchItem, run_img2img


class Seeded:
    """What the pipe reads of a torch.Generator."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def initial_seed(self) -> int:
        return self.seed


def spec(source: str = "sim:none?t1=0.05", steps: int = 10) -> ModelSpec:
    return ModelSpec(app_id="sim", family=ModelFamily.SD, source=source,
                     default_steps=steps, inference_types=["a10g"])  # fmt: skip


def call(pipe: SimulatedPipe, seeds: list[int], strength: float = 1.0, steps: int = 10,
         callback: Any = None) -> list[Image.Image]:  # fmt: skip
    result = pipe(prompt=["p"] * len(seeds), negative_prompt=None,
                  image=[Image.new("RGB", (8, 8))] * len(seeds), strength=strength,
                  guidance_scale=7.5, num_inference_steps=steps, num_images_per_prompt=1,
                  generator=[Seeded(s) for s in seeds], output_type="pil",
                  callback_on_step_end=callback)  # fmt: skip
    images: list[Image.Image] = result.images
    return images


def test_gain_is_exact_at_the_listed_batches_and_linear_between() -> None:
    eager = PROFILES["a100-sd15-eager"]
    assert [gain(eager, b) for b in (1, 2, 4, 8)] == [1.0, 1.66, 2.04, 2.25]
    assert gain(eager, 3) == pytest.approx((1.66 + 2.04) / 2)
    assert gain(eager, 6) == pytest.approx((2.04 + 2.25) / 2)
    assert gain(PROFILES["a100-sd15-compiled"], 2) == pytest.approx(1 + 0.34 / 3)


def test_gain_is_flat_past_the_largest_listed_batch_and_one_without_gains() -> None:
    assert gain(PROFILES["sdxl-1024"], 16) == 1.1
    assert gain(PROFILES["a10g-sd15"], 9) == 1.31
    assert {gain(PROFILES["none"], b) for b in (1, 2, 8)} == {1.0}
    with pytest.raises(ValueError, match="rows"):
        gain(PROFILES["none"], 0)


def test_a_call_of_b_rows_costs_b_t1_over_g_b() -> None:
    cost = CostModel("a100-sd15-eager", t1=0.4)
    assert cost.seconds(1) == pytest.approx(0.4)
    assert cost.seconds(8) == pytest.approx(8 * 0.4 / 2.25)
    assert CostModel("none", t1=0.4).seconds(4) == pytest.approx(1.6)


def test_the_source_names_the_profile_t1_and_the_call_log() -> None:
    parsed = parse_source("sim:a10g-sd15?t1=0.25&log=/tmp/calls.jsonl")
    assert parsed.cost == CostModel("a10g-sd15", 0.25)
    assert parsed.call_log == Path("/tmp/calls.jsonl")
    assert parse_source("sim:none").call_log is None


@pytest.mark.parametrize(
    ("source", "named"),
    [("builtin:tiny-sd", "not a simulated"), ("sim:h100-magic", "unknown profile"),
     ("sim:none?t1=fast", "not a number"), ("sim:none?t1=0", "must be in")],
)  # fmt: skip
def test_a_bad_source_is_a_model_error_that_says_why(source: str, named: str) -> None:
    with pytest.raises(ModelError, match=named):
        parse_source(source)


def test_steps_follow_diffusers_img2img_strength_cut() -> None:
    assert [steps_run(10, s) for s in (1.0, 0.7, 0.55, 0.1)] == [10, 7, 5, 1]
    with pytest.raises(ValueError, match="strength"):
        steps_run(10, 0.05)


def test_a_call_sleeps_t_b_and_calls_back_after_every_step() -> None:
    pipe = SimulatedPipe(CostModel("a100-sd15-eager", t1=0.1))
    seen: list[tuple[int, int]] = []

    def callback(p: SimulatedPipe, index: int, _t: int, tensors: dict[str, Any]) -> Any:
        seen.append((index, p.num_timesteps))
        return tensors

    begun = time.monotonic()
    images = call(pipe, [1, 2, 3, 4], strength=0.7, callback=callback)
    took = time.monotonic() - begun
    assert seen == [(i, 7) for i in range(7)]
    assert 4 * 0.1 / 2.04 <= took < 4 * 0.1 / 2.04 + 0.1
    assert len(images) == 4


def test_raising_from_the_callback_stops_the_sleep_there() -> None:
    pipe = SimulatedPipe(CostModel("none", t1=1.0))

    def cancel_at_two(_p: SimulatedPipe, index: int, _t: int, tensors: dict[str, Any]) -> Any:
        if index == 1:
            raise RuntimeError("canceled")
        return tensors

    begun = time.monotonic()
    with pytest.raises(RuntimeError, match="canceled"):
        call(pipe, [1], callback=cancel_at_two)
    assert time.monotonic() - begun < 0.5  # 2 of 10 steps of a 1 s call


def test_images_are_flat_64x64_and_depend_on_the_seed_alone() -> None:
    pipe = SimulatedPipe(CostModel("none", t1=0.01))
    first, again = call(pipe, [7, 8]), call(pipe, [9, 7])
    assert [image.size for image in first] == [(64, 64), (64, 64)]
    assert first[0].tobytes() == again[1].tobytes()
    assert first[0].getpixel((0, 0)) != first[1].getpixel((0, 0))
    assert first[0].getcolors() == [(64 * 64, first[0].getpixel((0, 0)))]


def test_rows_without_a_generator_each_are_refused() -> None:
    pipe = SimulatedPipe(CostModel("none", t1=0.01))
    with pytest.raises(ValueError, match="generator"):
        pipe(prompt=["a", "b"], image=[Image.new("RGB", (8, 8))] * 2, generator=[Seeded(1)])


def test_each_call_appends_one_json_line_to_the_call_log(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    pipe = load_simulated(spec(f"sim:a10g-sd15?t1=0.02&log={log}"), Settings())
    call(pipe, [1, 2, 3])
    call(pipe, [4], strength=0.5)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["rows"], c["steps"], c["completed"]) for c in lines] == [(3, 10, True), (1, 5, True)]
    assert all(c["end"] > c["start"] and c["wall_end"] > c["wall_start"] for c in lines)
    assert lines[1]["start"] >= lines[0]["end"]


def test_the_call_log_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_CALL_LOG", str(tmp_path / "env.jsonl"))
    call(load_simulated(spec(), Settings()), [1])
    assert len((tmp_path / "env.jsonl").read_text().splitlines()) == 1


def test_run_img2img_drives_the_simulated_pipe_as_a_real_one() -> None:
    model = spec("sim:a100-sd15-eager?t1=0.05")
    pipe = load_simulated(model, Settings())
    params = [GenerationParams(app_id="sim", prompt=f"p{n}", guidance_scale=7.5, batch=n,
                               strength=0.7, height=512, width=512) for n in (1, 2)]  # fmt: skip
    image = Image.new("RGB", (512, 512))
    steps: list[tuple[int, int]] = []
    items = [BatchItem(params[0], image, [5]), BatchItem(params[1], image, [5, 6])]
    shares = run_img2img(pipe, model, items, lambda step, total: steps.append((step, total)))
    assert [len(share) for share in shares] == [1, 2]
    assert shares[0][0].tobytes() == shares[1][0].tobytes()  # seed 5 in both jobs
    assert steps == [(n, 7) for n in range(1, 8)]
    assert pipe.vae.tiling is False
