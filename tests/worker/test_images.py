"""Input images: allowed formats only, EXIF orientation, RGB, fit within 1536 without upscaling."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.errors import ImageDecodeError
from worker.images import decode_image, encode_png, prepare_image


def encoded(width: int, height: int, fmt: str = "PNG", mode: str = "RGB", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128 if mode == "L" else (10, 200, 30)).save(
        buffer, format=fmt, **save
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "fitted"),
    [
        ((3000, 1500), (1536, 768)),  # the example: fit, keep aspect
        ((1500, 3000), (768, 1536)),
        ((800, 600), (768, 576)),  # never upscaled; cropped down to multiples of 64
        ((1536, 1536), (1536, 1536)),
        ((4000, 3000), (1536, 1152)),
        ((64, 64), (64, 64)),
    ],
)
def test_sd_inputs_fit_within_1536_and_round_to_64(
    size: tuple[int, int], fitted: tuple[int, int]
) -> None:
    assert prepare_image(encoded(*size, "JPEG"), "sd", 1024, 1024).size == fitted


def test_sdxl_inputs_take_the_requested_size(tmp_path: object) -> None:
    assert prepare_image(encoded(300, 200), "sdxl", 768, 1024).size == (768, 1024)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    data = encoded(640, 320, "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (320, 640)


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"), ("PNG", "L")]
)
def test_allowed_formats_decode_to_rgb(fmt: str, mode: str) -> None:
    image = decode_image(encoded(96, 80, fmt, mode))
    assert (image.mode, image.size) == ("RGB", (96, 80))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encoded(64, 64, "TIFF"), "image: not a decodable JPEG, PNG, WebP, GIF or BMP"),
        (b"hello, not an image", "image: not a decodable JPEG, PNG, WebP, GIF or BMP"),
        (encoded(512, 512, "PNG")[:100], "image: the file is damaged or truncated"),
    ],
)
def test_bad_images_fail_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data)
    assert str(caught.value).startswith(message)


def test_too_small_image_is_refused() -> None:
    with pytest.raises(ImageDecodeError, match=r"image: 100x40 is too small"):
        prepare_image(encoded(100, 40), "sd", 1024, 1024)


def test_outputs_encode_as_png() -> None:
    data = encode_png(Image.new("RGB", (64, 32)))
    assert data.startswith(b"\x89PNG") and Image.open(io.BytesIO(data)).size == (64, 32)
