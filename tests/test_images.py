"""Decoding with limits, orientation and odd pixel formats; encoding to every output format."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import (
    DecodedImage,
    EmptyImage,
    ImageLimits,
    ImageTooLarge,
    InvalidOptions,
    UndecodableImage,
    UnsupportedImageType,
    decode_image,
    encode_image,
)
from pipeline.png_chunks import SIGNATURE

from .conftest import png_chunk

LIMITS = ImageLimits()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming a huge image, followed by a tiny IDAT: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + png_chunk(b"IEND", b""))


def pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_zero_bytes_is_empty_image():
    with pytest.raises(EmptyImage):
        decode_image(b"", LIMITS)


def test_text_renamed_to_jpg_is_unsupported(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n" * 10)
    with pytest.raises(UnsupportedImageType):
        decode_image(path.read_bytes(), LIMITS)


def test_truncated_jpeg_is_undecodable(t1_path):
    data = t1_path.read_bytes()
    with pytest.raises(UndecodableImage):
        decode_image(data[: len(data) // 2], LIMITS)


def test_decompression_bomb_refused_before_allocation():
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 200
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match="30000x30000"):
            decode_image(bomb, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024, f"decoding the bomb header allocated {peak} bytes"


def test_byte_limit_checked_first():
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(b"\xff\xd8" + b"\0" * 2000, ImageLimits(max_bytes=1000, max_pixels=10**6))


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red in RGB
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(pil_bytes(img, "JPEG", exif=exif, quality=95), LIMITS)
    assert (decoded.height, decoded.width) == (40, 20)
    # after a clockwise turn the former left half is on top; in BGR red is channel 2
    assert decoded.bgr[5, 10, 2] > 200 and decoded.bgr[35, 10, 2] < 50


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA"])
def test_modes_decode_to_bgr(mode):
    img = Image.new("RGB", (16, 12), (10, 200, 30)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(pil_bytes(img, fmt), LIMITS)
    assert decoded.bgr.shape == (12, 16, 3) and decoded.bgr.dtype == np.uint8
    assert (decoded.alpha is not None) == (mode in ("RGBA", "LA"))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    gray16 = np.full((8, 8), 32768, dtype=np.uint16)
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), gray16)
    decoded = decode_image(path.read_bytes(), LIMITS)
    assert abs(int(decoded.bgr[0, 0, 0]) - 128) <= 1
    rgb16 = np.full((8, 8, 3), 16384, dtype=np.uint16)
    cv2.imwrite(str(path), rgb16)
    assert abs(int(decode_image(path.read_bytes(), LIMITS).bgr[0, 0, 0]) - 64) <= 1


@pytest.mark.parametrize("fmt,magic", [("jpeg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_encode_formats(fmt, magic):
    image = DecodedImage(bgr=np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    data, media_type = encode_image(image, fmt, 80)
    assert data.startswith(magic) and media_type == f"image/{fmt}"
    assert decode_image(data, LIMITS).bgr.shape == (32, 48, 3)


def test_quality_changes_size_and_alpha_survives_png():
    rng = np.random.default_rng(1)
    image = DecodedImage(bgr=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), alpha=np.full((64, 64), 77, np.uint8))
    low, _ = encode_image(image, "jpeg", 20)
    high, _ = encode_image(image, "jpeg", 95)
    assert len(low) < len(high)
    png, _ = encode_image(image, "png")
    assert decode_image(png, LIMITS).alpha[0, 0] == 77


def test_unknown_output_format():
    with pytest.raises(InvalidOptions):
        encode_image(DecodedImage(bgr=np.zeros((4, 4, 3), np.uint8)), "gif")
