"""Hostile inputs from the security table: each fails with a one-line reason, cheaply.

Each file is a real instance of its kind (Pillow itself recognises the PSD and the FITS
file without our allow-list), so the refusals below are the allow-list and caps at work.
"""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from shared.errors import ImageDecodeError
from worker.images import decode_image

NOT_ALLOWED = "image: not a decodable JPEG, PNG, WebP, GIF or BMP"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose data is one tiny row."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def psd() -> bytes:
    """A 1x1 RGB Photoshop file."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 1, 1, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour data, resources, layers: empty
    return header + sections + struct.pack(">H", 0) + b"\x10\x20\x30"


def fits() -> bytes:
    """A 1x1 8-bit FITS image."""
    cards = ["SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 2", "NAXIS1  = 1", "NAXIS2  = 1", "END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    return header + b"\x7f".ljust(2880, b"\x00")


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 64).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "kind"), [(psd(), "PSD"), (fits(), "FITS")])
def test_formats_pillow_knows_but_we_do_not_allow_are_refused(data: bytes, kind: str) -> None:
    assert Image.open(io.BytesIO(data)).format == kind  # a genuine file of that kind
    with pytest.raises(ImageDecodeError, match=f"^{NOT_ALLOWED}$"):
        decode_image(data)


def test_a_100_megapixel_png_is_refused_before_decoding() -> None:
    data = png_claiming(10_000, 10_000)
    assert len(data) < 100  # a bomb: tiny on the wire
    with pytest.raises(ImageDecodeError, match=r"^image: too many pixels"):
        decode_image(data)


def test_a_png_just_under_the_cap_is_still_judged_on_its_data() -> None:
    with pytest.raises(ImageDecodeError, match="damaged or truncated"):
        decode_image(png_claiming(4000, 4000))  # allowed size, but the data is one pixel


def test_a_truncated_jpeg_fails() -> None:
    data = jpeg(256, 256)
    with pytest.raises(ImageDecodeError, match=r"^image: the file is damaged or truncated"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [b"hello, I am a text file named photo.png\n", b"<svg xmlns='http://www.w3.org/2000/svg'/>"],
)
def test_text_posing_as_an_image_is_refused(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match=f"^{NOT_ALLOWED}$"):
        decode_image(data)
