"""Image decoding with limits, shared by every service that accepts images.

The header is read before any pixel is decoded, so a decompression bomb is
refused without allocating it.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from shared.errors import ImageTooLarge, InvalidImage

DEFAULT_MAX_PIXELS = 40_000_000  # about 6300 x 6300: larger photos gain nothing at 336 px
DEFAULT_MAX_BYTES = 50 * 1024 * 1024


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """Decode `data` into an RGB image, or raise a clear InvalidImage / ImageTooLarge."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidImage(f"image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidImage("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            check_image_size(width, height, max_pixels=max_pixels)
            image.load()
    except (ImageTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"image refused before decoding: {exc} Our limit is {max_pixels} pixels; downscale it first."
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage("bytes are not an image in a known format (PNG, JPEG, WebP, ...)") from exc
    except Exception as exc:  # decoders raise many types on hostile input; all mean "not a usable image"
        raise InvalidImage(f"image is truncated or corrupt: {exc.__class__.__name__}: {exc}") from exc
    return image.convert("RGB")


def check_image_size(width: int, height: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}. "
            "Downscale it first (the teacher sees 336x336 anyway)."
        )
