"""The facts about a PNG's chunks that decide whether OpenCV may decode it in place of Pillow.

Why a module: Pillow decodes PNG 1.15-1.35x slower than OpenCV's libpng (`python -m bench.png_decode`:
the 29-face Solvay photograph, a 3 MB grayscale PNG, 62 against 52 ms on a 2-CPU dev machine, where
Pillow's decode took 126 ms on the H200 machine's host, the largest stage of that request; 4K RGB 175
against 130 ms), but it raises on damaged files where OpenCV's answer is less clear. Walking the chunk
list (a length, a type and a CRC around each chunk's data; PNG spec, section 5) tells, without
decoding anything, whether the file is whole (every chunk inside the data, IEND last) and what it
holds besides pixels: transparency, an EXIF orientation (in eXIf, or in XMP or raw-profile text), an
animation. Only plain, whole 8-bit files go to OpenCV (pipeline/images.py); libpng still checks every CRC
and the compressed data as it decodes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRAY, RGB, GRAY_ALPHA, RGBA = 0, 2, 4, 6  # IHDR colour types OpenCV gives as Pillow does (3 is a palette)
# what changes the pixels beyond what OpenCV's plain decode does as Pillow does (transparency of gray/RGB,
# an EXIF orientation, APNG frames); such files stay with Pillow
NOT_PLAIN = frozenset({b"tRNS", b"eXIf", b"acTL"})
# Pillow also reads an orientation from text chunks: XMP's tiff:Orientation, and EXIF written as a "Raw
# profile type exif" (ImageMagick, exiftool); such files stay with Pillow too
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
ORIENTATION_TEXT = (b"XML:com.adobe.xmp", b"Raw profile type ")  # a keyword equal to or starting with one


@dataclass(frozen=True)
class PngLayout:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    chunk_types: frozenset[bytes]
    orientation_text: bool = False  # a text chunk whose keyword may carry an orientation (ORIENTATION_TEXT)

    @property
    def has_alpha(self) -> bool:
        return self.colour_type in (GRAY_ALPHA, RGBA)

    @property
    def plain(self) -> bool:
        """8-bit gray, gray+alpha, RGB or RGBA with nothing in NOT_PLAIN: OpenCV's pixels are Pillow's."""
        return (self.bit_depth == 8 and self.colour_type in (GRAY, RGB, GRAY_ALPHA, RGBA)
                and not self.chunk_types & NOT_PLAIN and not self.orientation_text)


def png_layout(data: bytes) -> PngLayout | None:
    """The layout of a whole PNG; None when the signature or IHDR is missing, a chunk runs past the end,
    or the data do not end with the IEND chunk (a file cut short, or with bytes after its end)."""
    if not data.startswith(SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, bit_depth, colour_type = struct.unpack_from(">IIBB", data, 16)
    types: set[bytes] = set()
    orientation_text = False
    pos = len(SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4:pos + 8]
        body = pos + 8
        pos += 12 + length  # length, type, data, CRC
        if pos > len(data):
            return None
        types.add(kind)
        if kind in TEXT_CHUNKS:
            keyword = data[body:body + min(length, 80)].split(b"\0", 1)[0]  # keywords are 1-79 bytes
            orientation_text = orientation_text or keyword.startswith(ORIENTATION_TEXT)
        if kind == b"IEND":
            whole = pos == len(data)
            return PngLayout(width, height, bit_depth, colour_type, frozenset(types), orientation_text) if whole else None
    return None
