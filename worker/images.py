"""Getting the input image into shape: decode, orient, fit; and encoding outputs."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import ImageDecodeError
from shared.models import OutputFormat

MAX_SIDE = 1536
SIZE_MULTIPLE = 64  # what every SD/SDXL UNet divides cleanly
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_PIXELS = 64_000_000


def decode_image(data: bytes) -> Image.Image:
    """Decode an allowed format fully, apply EXIF orientation and convert to RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            if opened.width * opened.height > MAX_PIXELS:
                raise ImageDecodeError(f"image: {opened.width}x{opened.height} has too many pixels")
            if opened.format == "JPEG":
                opened.draft("RGB", _fitted(opened.width, opened.height))  # decode at reduced scale
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageDecodeError(f"image: too many pixels (the cap is {MAX_PIXELS})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("image: not a decodable JPEG, PNG, WebP, GIF or BMP") from None
    except OSError as exc:
        raise ImageDecodeError(f"image: the file is damaged or truncated ({exc})") from None
    return image.convert("RGB")


def _fitted(width: int, height: int) -> tuple[int, int]:
    """The size within MAX_SIDE x MAX_SIDE that keeps the aspect ratio; never larger."""
    scale = min(1.0, MAX_SIDE / width, MAX_SIDE / height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def fit_for_sd(image: Image.Image, original: tuple[int, int]) -> Image.Image:
    """Fit within 1536x1536 without upscaling, then centre-crop to multiples of 64."""
    width, height = _fitted(*original)
    if width < SIZE_MULTIPLE or height < SIZE_MULTIPLE:
        raise ImageDecodeError(
            f"image: {original[0]}x{original[1]} is too small; each side needs {SIZE_MULTIPLE} px"
        )
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    crop_w, crop_h = width - width % SIZE_MULTIPLE, height - height % SIZE_MULTIPLE
    if (crop_w, crop_h) != (width, height):
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    return image


def fit_exact(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale and centre-crop to exactly ``width`` x ``height`` (SDXL's requested size)."""
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)


def prepare_image(data: bytes, family: str, width: int, height: int) -> Image.Image:
    """Decode and size an input image for a model family."""
    image = decode_image(data)
    if family == "sdxl":
        return fit_exact(image, width, height)
    return fit_for_sd(image, image.size)


PREVIEW_SIDE = 256


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of one output image."""
    return encode(image, OutputFormat.PNG, 100)


def encode(image: Image.Image, fmt: OutputFormat, quality: int) -> bytes:
    """One output image in the requested format; quality applies to JPEG and WebP."""
    buffer = io.BytesIO()
    if fmt is OutputFormat.PNG:
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format=fmt.value.upper(), quality=quality)
    return buffer.getvalue()


def preview(image: Image.Image) -> bytes:
    """A small JPEG of an output, for ``low_res_urls``."""
    small = image.copy()
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    return encode(small, OutputFormat.JPEG, 75)
