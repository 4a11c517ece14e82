"""PNGs decoded by OpenCV where that gives Pillow's pixels (pipeline/png_chunks.py, pipeline/images.py):
every plain 8-bit layout comes out as Pillow decodes it, with alpha kept; every other PNG (16-bit,
palette, transparency chunk, EXIF orientation) and every damaged one takes Pillow's path as before."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline import ImageLimits, UndecodableImage, decode_image
from pipeline.images import _opencv_png
from pipeline.png_chunks import png_layout

from .conftest import png_chunk, png_parts, shared_file

LIMITS = ImageLimits()


def _png(img: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **params)
    return buf.getvalue()


def _pillow_reference(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """What Pillow alone makes of the file: BGR, turned as its orientation says, and alpha where the image
    has it."""
    img = Image.open(io.BytesIO(data))
    rgba = np.asarray(ImageOps.exif_transpose(img.convert("RGBA")))
    alpha = rgba[:, :, 3] if img.mode in ("RGBA", "LA") else None
    return np.ascontiguousarray(rgba[:, :, 2::-1]), alpha


def _noise(mode: str, size=(37, 23)) -> Image.Image:
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(axis=2) if channels == 1 else pixels, mode)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_a_plain_png_is_decoded_by_opencv_with_pillows_pixels_and_alpha(mode):
    data = _png(_noise(mode))
    assert png_layout(data).plain
    assert _opencv_png(data, (37, 23)) is not None  # this layout takes OpenCV's path
    decoded = decode_image(data, LIMITS)
    bgr, alpha = _pillow_reference(data)
    assert decoded.bgr.flags.c_contiguous and decoded.source_format == "png"
    assert np.array_equal(decoded.bgr, bgr)
    assert (decoded.alpha is None) == (alpha is None)
    if alpha is not None:
        assert np.array_equal(decoded.alpha, alpha)


def test_the_solvay_photograph_decodes_to_pillows_pixels():
    data = shared_file("images", "solvay_conference_1927.png").read_bytes()
    layout = png_layout(data)
    assert (layout.width, layout.height, layout.bit_depth, layout.plain) == (3000, 2171, 8, True)
    assert np.array_equal(decode_image(data, LIMITS).bgr, _pillow_reference(data)[0])


@pytest.mark.parametrize("make", [
    lambda: _png(_noise("RGB").convert("P")),                            # palette
    lambda: _png(_noise("RGB"), transparency=(1, 2, 3)),                 # tRNS on RGB
    lambda: _png(Image.fromarray(np.full((9, 7), 40000, np.uint16))),  # 16-bit gray
], ids=["palette", "transparency", "16-bit"])
def test_other_pngs_take_pillows_path_and_still_decode(make):
    data = make()
    assert not png_layout(data).plain and _opencv_png(data, Image.open(io.BytesIO(data)).size) is None
    decoded = decode_image(data, LIMITS)
    assert decoded.bgr.dtype == np.uint8 and decoded.bgr.shape[2] == 3


def test_an_exif_orientation_in_a_png_is_still_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise on display
    data = _png(img, exif=exif)
    assert b"eXIf" in png_layout(data).chunk_types and not png_layout(data).plain
    decoded = decode_image(data, LIMITS)
    assert (decoded.height, decoded.width) == (40, 20)
    assert decoded.bgr[5, 10, 2] > 200 and decoded.bgr[35, 10, 2] < 50  # the former left half on top




def test_a_png_cut_short_is_refused_as_before():
    data = _png(_noise("RGB", (300, 200)))
    cut = data[: len(data) // 2]
    assert png_layout(cut) is None
    with pytest.raises(UndecodableImage):
        decode_image(cut, LIMITS)


def test_a_png_whose_compressed_rows_end_early_takes_pillows_path():
    """Whole chunks, a CRC that holds, but half the rows in the compressed data: OpenCV refuses it,
    so the verdict is Pillow's, as it was before OpenCV decoded PNGs."""
    data = b"".join(png_parts(np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8), rows=20))
    assert png_layout(data).plain and _opencv_png(data, (30, 40)) is None
    try:
        pillow = _pillow_reference(data)[0]
    except OSError:
        with pytest.raises(UndecodableImage):
            decode_image(data, LIMITS)
    else:
        assert np.array_equal(decode_image(data, LIMITS).bgr, pillow)


def test_bytes_after_the_end_leave_the_png_to_pillow():
    data = _png(_noise("RGB")) + b"trailer"
    assert png_layout(data) is None
    assert np.array_equal(decode_image(data, LIMITS).bgr, _pillow_reference(data)[0])


def test_a_damaged_crc_is_never_decoded_differently_from_pillow():
    """A flipped byte in the compressed data: libpng's CRC check refuses it, and Pillow gives the verdict."""
    data = bytearray(_png(_noise("RGB", (64, 48))))
    at = data.index(b"IDAT") + 40
    data[at] ^= 0xFF
    data = bytes(data)
    assert _opencv_png(data, (64, 48)) is None
    try:
        pillow = _pillow_reference(data)[0]
    except (OSError, SyntaxError, ValueError):
        with pytest.raises(UndecodableImage):
            decode_image(data, LIMITS)
    else:
        assert np.array_equal(decode_image(data, LIMITS).bgr, pillow)


def test_the_png_decode_bench_compares_both_paths_on_the_same_pixels(capsys):
    shared_file("images", "solvay_conference_1927.png")
    from bench.png_decode import main

    rows = main(["--calls", "2", "--rounds", "1"])
    assert {row[0] for row in rows} >= {"solvay_conference_1927.png", "1080p RGB"}
    assert all(row[2] == "yes" and row[-1] == "yes" and row[4] > 0 and row[5] > 0 for row in rows), rows
    from pipeline import images  # the baseline's switch is undone: OpenCV's path serves again

    assert images._opencv_png(shared_file("images", "solvay_conference_1927.png").read_bytes(), (3000, 2171)) is not None
    assert "OpenCV / Pillow" in capsys.readouterr().out


def _half_red(width: int = 40, height: int = 20) -> tuple[bytes, bytes, bytes]:
    """The PNG parts (conftest.png_parts) of an RGB image whose left half is red, the right blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2:, 2] = 255
    return png_parts(pixels)


def _raw_profile_exif(orientation: int) -> bytes:
    """EXIF as ImageMagick writes it into PNG text: a name, the length, then hex in lines."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    blob = exif.tobytes().hex()
    return (f"\nexif\n{len(blob) // 2:8d}\n" + "\n".join(blob[i:i + 72] for i in range(0, len(blob), 72)) + "\n").encode()


XMP_TURNED = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("text", [
    png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP_TURNED),
    png_chunk(b"tEXt", b"Raw profile type exif\x00" + _raw_profile_exif(6)),
    png_chunk(b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(_raw_profile_exif(6))),
], ids=["xmp", "raw-profile-text", "raw-profile-compressed"])
def test_an_orientation_in_a_text_chunk_keeps_pillows_turn(text, where):
    """Pillow turns a PNG whose XMP or raw-profile EXIF text gives an orientation: such a file is not plain,
    so it is turned as before OpenCV decoded PNGs, wherever the chunk sits."""
    head, idat, end = _half_red()
    data = head + text + idat + end if where == "before" else head + idat + text + end
    assert not png_layout(data).plain
    decoded = decode_image(data, LIMITS)
    assert (decoded.height, decoded.width) == (40, 20)  # turned a quarter
    assert np.array_equal(decoded.bgr, _pillow_reference(data)[0])


def test_other_text_chunks_keep_a_png_plain():
    head, idat, end = _half_red()
    data = head + png_chunk(b"tEXt", b"Software\x00made by hand") + png_chunk(b"iTXt", b"Comment\x00\x00\x00\x00\x00hi") + idat + end
    assert png_layout(data).plain and _opencv_png(data, (40, 20)) is not None
    assert np.array_equal(decode_image(data, LIMITS).bgr, _pillow_reference(data)[0])
