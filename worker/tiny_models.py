"""The built-in tiny models: SD- and SDXL-shaped pipelines with small random weights, and a
safety checker shaped like CompVis's.

They are generated deterministically on first use, saved as ordinary diffusers folders
and then loaded through ``from_pretrained`` like any real model, so tests and laptops
exercise the production path with no download. Their images are noise, and the checker's
verdicts are arbitrary until ``EASEL_NSFW_THRESHOLD`` decides them (-1 or 2).

Speed matters more than fidelity here: the VAE downsamples 8x as real ones do, its mid
block has no attention, and the UNet attends only at its lowest resolution, so a
1024x1024 job stays within a few seconds on two CPU cores.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

BUILTIN_PREFIX = "builtin:"
# Each built-in model, and the file its folder has once it is complete.
MARKERS = {
    "tiny-sd": "model_index.json",
    "tiny-sdxl": "model_index.json",
    "tiny-safety": "preprocessor_config.json",
}
TINY_MODELS = tuple(MARKERS)


def ensure_tiny_model(name: str, model_dir: Path) -> Path:
    """The folder of a built-in model, generating it once if it is missing."""
    if name not in MARKERS:
        raise ValueError(f"unknown built-in model {name!r}; choose from {TINY_MODELS}")
    target = model_dir / name
    if (target / MARKERS[name]).exists():
        return target
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several workers may start at once
        if not (target / MARKERS[name]).exists():
            with tempfile.TemporaryDirectory(dir=model_dir) as scratch:
                folder = Path(scratch) / name
                _save(name, folder)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(folder, target)  # whole or absent: a reader never sees half of it
    return target


def _save(name: str, folder: Path) -> None:
    if name == "tiny-safety":
        checker, feature_extractor = _safety_checker()
        checker.save_pretrained(folder)
        feature_extractor.save_pretrained(folder)  # beside it, as in CompVis's repo
    else:
        _build(name).save_pretrained(folder)


def _build(name: str) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    if name == "tiny-sd":
        return StableDiffusionImg2ImgPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(),
            tokenizer=_tokenizer(),
            unet=_unet(xl=False),
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return StableDiffusionXLImg2ImgPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(),
        text_encoder_2=_text_encoder(projection=True),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(),
        unet=_unet(xl=True),
        scheduler=_scheduler(),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )


def _byte_vocab() -> dict[str, int]:
    """A CLIP vocabulary of single byte-level symbols: every prompt tokenizes, no merges."""
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


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=77)


def _text_encoder(projection: bool = False) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(_byte_vocab()),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=32,
    )
    model_class = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model_class(config)


def _vae() -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=128,
        mid_block_add_attention=False,
        force_upcast=False,
    )


def _unet(xl: bool) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    extra: dict[str, Any] = {}
    if xl:
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 8 * 6 + 32,
            "use_linear_projection": True,
        }
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=64 if xl else 32,  # SDXL concatenates both text encoders
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )


def _safety_checker() -> tuple[Any, Any]:
    """diffusers' StableDiffusionSafetyChecker on a tiny CLIP vision tower, and its feature
    extractor (32x32 inputs instead of 224x224).

    Its 17 concept and 3 special-care embeddings are random directions (the class starts
    them all at ones) and their thresholds lie near the real checker's, so a decision
    depends on the image as it does in production.
    """
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={  # unused by the checker, but part of its config
            "vocab_size": 99,
            "hidden_size": 16,
            "intermediate_size": 37,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        for embeds in (checker.concept_embeds, checker.special_care_embeds):
            embeds.copy_(torch.randn_like(embeds))
        for weights in (checker.concept_embeds_weights, checker.special_care_embeds_weights):
            weights.copy_(0.15 + 0.1 * torch.rand_like(weights))
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return checker, feature_extractor
