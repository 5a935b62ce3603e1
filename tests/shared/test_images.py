import contextlib
import io

import pytest
from PIL import Image

from shared.errors import ImageTooLarge, InvalidImage
from shared.images import decode_image


def _bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_decodes_to_rgb_whatever_the_mode():
    image = decode_image(_bytes(Image.new("LA", (10, 7))))
    assert image.mode == "RGB" and image.size == (10, 7)


def test_jpeg_truncated_is_refused():
    data = _bytes(Image.effect_noise((200, 200), 40).convert("RGB"), "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 3])


def test_wrong_type_and_byte_limit():
    with pytest.raises(InvalidImage, match="bytes"):
        decode_image("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(b"x" * 101, max_bytes=100)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"])
def test_corrupted_images_only_ever_raise_our_errors(fmt):
    import random

    original = _bytes(Image.effect_noise((64, 48), 60).convert("RGB"), fmt)
    rng = random.Random(fmt)
    for _ in range(150):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        with contextlib.suppress(InvalidImage, ImageTooLarge):
            decode_image(bytes(data))
