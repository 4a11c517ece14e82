"""The few facts about a baseline JPEG's marker segments that encoding and decoding in strips need.

Why a module: pipeline/jpeg_strips.py (encode) and pipeline/jpeg_strip_decode.py (decode) both cut a
JPEG at its start of scan and read its frame header; neither decodes entropy-coded data, which stays
libjpeg's job (through OpenCV). ITU T.81: every segment before the scan is FF, a marker byte and a
16-bit length that counts itself; the frame header (SOF0/SOF1 for baseline and extended sequential
Huffman) gives the precision, size and each component's sampling factors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOI, EOI = b"\xff\xd8", b"\xff\xd9"
SOS, DRI = 0xDA, 0xDD  # start of scan, define restart interval
SOF_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential, Huffman coded
SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every frame header (C4 DHT, C8 JPG, CC DAC)
TABLE_MARKERS = (0xDB, 0xC4)  # quantisation and Huffman tables
RST0 = 0xD0  # restart markers RST0..RST7 follow each other modulo 8

Segment = tuple[int, bytes]  # (marker byte, the whole segment from its FF)


def header_segments(jpeg: bytes) -> tuple[list[Segment], int] | None:
    """The marker segments after SOI up to and with the first SOS, and where the scan's data starts; None
    when `jpeg` does not start with SOI or a segment runs past the end."""
    if not jpeg.startswith(SOI):
        return None
    segments: list[Segment] = []
    at = len(SOI)
    while at + 4 <= len(jpeg) and jpeg[at] == 0xFF:
        marker = jpeg[at + 1]
        (length,) = struct.unpack_from(">H", jpeg, at + 2)
        if length < 2 or at + 2 + length > len(jpeg):
            return None
        segments.append((marker, jpeg[at:at + 2 + length]))
        at += 2 + length
        if marker == SOS:
            return segments, at
    return None


@dataclass(frozen=True)
class Frame:
    """A sequential frame header: 8-bit samples, its size, and the MCU its sampling factors make."""

    width: int
    height: int
    factors: tuple[tuple[int, int], ...]  # (horizontal, vertical) per component

    @property
    def mcu_width(self) -> int:
        return 8 * max(h for h, _ in self.factors) if len(self.factors) > 1 else 8

    @property
    def mcu_height(self) -> int:
        return 8 * max(v for _, v in self.factors) if len(self.factors) > 1 else 8

    @property
    def mcus_per_row(self) -> int:
        return -(-self.width // self.mcu_width)

    @property
    def mcu_rows(self) -> int:
        return -(-self.height // self.mcu_height)

    @property
    def subsampled_vertically(self) -> bool:
        """A component with fewer rows than the MCU: libjpeg's upsampling then reads the rows around it."""
        return len({v for _, v in self.factors}) > 1


def frame(segments: list[Segment]) -> Frame | None:
    """The one sequential frame header among `segments`, or None (progressive, lossless, 12-bit, none, or
    more than one frame header: libjpeg refuses such a file, and Pillow reads its size from the last)."""
    if sum(marker in SOF_ANY for marker, _ in segments) != 1:
        return None
    for marker, segment in segments:
        if marker in SOF_SEQUENTIAL:
            if len(segment) < 10:
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", segment, 4)
            if precision != 8 or not width or not height or not components or len(segment) < 10 + 3 * components:
                return None
            factors = tuple((segment[11 + 3 * i] >> 4, segment[11 + 3 * i] & 0x0F) for i in range(components))
            if not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in factors):
                return None
            return Frame(width=width, height=height, factors=factors)
    return None


def restart_interval(segments: list[Segment]) -> int:
    """The MCUs between restart markers in the scan: the last DRI's before it, as libjpeg reads them (a
    later DRI replaces an earlier one); 0 when there is none."""
    interval = 0
    for marker, segment in segments:
        if marker == DRI and len(segment) >= 6:
            interval = struct.unpack_from(">H", segment, 4)[0]
    return interval


def with_height(segment: bytes, height: int) -> bytes:
    """A frame header segment with its number of lines replaced."""
    return segment[:5] + struct.pack(">H", height) + segment[7:]


def dri_segment(interval: int) -> bytes:
    return struct.pack(">BBHH", 0xFF, DRI, 4, interval)
