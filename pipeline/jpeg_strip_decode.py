"""JPEG decoding of a large image on several threads, where the file carries restart markers.

Why: libjpeg decodes on one core (1080p 4.6 ms, 4K 18.5 ms on the H100 machine's CPU), and that adds
straight to a request's latency at low concurrency. Entropy-coded data can only be cut where the coder
restarted: at restart markers (DRI/RSTn, ITU T.81 B.2.4.4). Many cameras and editors write them (three
of the four photographs in ../shared have one every MCU row), and so does this function's own answer
(pipeline/jpeg_strips.py). When the restart interval is a whole number of MCU rows, consecutive
intervals are a band of the image: each strip of intervals becomes a JPEG of its own (the original's
tables, its own height, the RSTs numbered from 0 again), decoded by OpenCV (without the GIL) on a helper
thread where one is free, and its rows are copied into the image.

The pixels are exactly cv2.imdecode's of the whole file (tests/test_jpeg_strip_decode.py): the inverse
DCT and colour conversion work per block and pixel, and where chroma has fewer rows than luma (4:2:0)
libjpeg's upsampling reads the chroma rows either side of a band edge, so such a strip is decoded with
one interval more above and below, and those rows are dropped. Anything else (no restart markers, an
interval that is not whole rows, markers out of order, a progressive or 12-bit file, four components,
more than one frame header, a frame of another size than the caller checked, strips that would be
mostly margin, no helper free, an EXIF orientation to apply) gets None, and the caller's one-piece decode.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from . import overlap
from .jpeg_markers import (
    EOI,
    RST0,
    SOF_SEQUENTIAL,
    SOI,
    Segment,
    frame,
    header_segments,
    restart_interval,
    with_height,
)
from .jpeg_strips import MIN_STRIP_PIXELS

# what a strip's JPEG leaves out of the original's segments before the scan: application data (EXIF,
# ICC profiles, XMP; the image is only decoded in strips when upright) and comments. JFIF APP0 and Adobe
# APP14 say how to read the colours, and anything else (tables, the frame, DRI, markers libjpeg would
# refuse) is kept, so each strip meets libjpeg's verdict on the whole file
DROPPED_MARKERS = frozenset(range(0xE1, 0xF0)) - {0xEE} | {0xFE}
# with chroma subsampled vertically each strip decodes one interval more above and below: a strip is at
# least this many intervals, so those extra rows cost at most half a strip
MIN_INTERVALS_WITH_MARGIN = 4
MARKER = re.compile(rb"\xff[^\x00]")  # in entropy-coded data a data byte FF is always followed by 00


def has_restarts(data: bytes) -> bool:
    """A DRI among the segments before the first scan (walked segment by segment: a camera's EXIF
    thumbnail, a JPEG of its own inside APP1, has a scan of its own)."""
    cut = header_segments(data)
    return cut is not None and restart_interval(cut[0]) > 0


def decode_in_strips(data: bytes, threads: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """BGR pixels of the complete JPEG `data` (HxWx3 uint8, as cv2.imdecode with IMREAD_COLOR gives them,
    without EXIF orientation: callers use this only for upright images), decoded in strips on this
    thread and the helper threads free now (pipeline/overlap.py), or on `threads` threads; None when the
    file cannot be cut, is too small to gain from it, no helper is free, or its frame is not `size`
    (width, height: what the caller checked against its limits)."""
    cut = header_segments(data)
    if cut is None:
        return None
    segments, scan_start = cut
    layout = frame(segments)
    interval = restart_interval(segments)
    if layout is None or interval == 0 or len(layout.factors) not in (1, 3):
        return None
    if size is not None and (layout.width, layout.height) != tuple(size):
        return None
    rows_per_interval, rest = divmod(interval, layout.mcus_per_row)
    if rows_per_interval == 0 or rest:
        return None
    intervals = -(-layout.mcu_rows // rows_per_interval)
    # no helper free: one piece, as fast as strips one after another and without their margins; never
    # more strips than CPUs (HELPER_THREADS), since each strip beyond them only adds margins and hand-offs
    threads = min(overlap.free_helpers() + 1, overlap.HELPER_THREADS) if threads is None else threads
    margin = 1 if layout.subsampled_vertically else 0
    most = intervals // MIN_INTERVALS_WITH_MARGIN if margin else intervals
    strips = min(threads, (layout.width * layout.height) // MIN_STRIP_PIXELS, most)
    if strips < 2:
        return None
    bounds = _interval_bounds(data, scan_start, intervals)
    if bounds is None:
        return None
    per_strip = -(-intervals // strips)
    band = rows_per_interval * layout.mcu_height  # pixel rows of one interval
    header = [(marker, segment) for marker, segment in segments if marker not in DROPPED_MARKERS]
    image = np.empty((layout.height, layout.width, 3), np.uint8)

    def decode_strip(first: int) -> bool:
        last = min(intervals, first + per_strip)
        lo, hi = max(0, first - margin), min(intervals, last + margin)
        top, bottom = lo * band, min(layout.height, hi * band)
        piece = _strip_jpeg(data, header, bounds[lo:hi], bottom - top)
        pixels = cv2.imdecode(np.frombuffer(piece, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None or pixels.shape != (bottom - top, layout.width, 3):
            return False
        keep_top, keep_bottom = first * band, min(layout.height, last * band)
        image[keep_top:keep_bottom] = pixels[keep_top - top:keep_bottom - top]
        return True

    if not all(overlap.each(decode_strip, range(0, intervals, per_strip))):
        return None
    return image


def _interval_bounds(data: bytes, scan_start: int, intervals: int) -> list[tuple[int, int]] | None:
    """(start, end) in `data` of each restart interval's entropy-coded data, or None unless the scan holds
    exactly `intervals` - 1 restart markers in order and no other marker (a second scan, a table, fill
    bytes) before its EOI."""
    end = len(data.rstrip(b"\x00")) - len(EOI)
    if end < scan_start or data[end:end + len(EOI)] != EOI:
        return None
    starts, bounds = scan_start, []
    for index, found in enumerate(MARKER.finditer(memoryview(data)[scan_start:end])):
        if index >= intervals - 1 or found.group()[1] != RST0 + index % 8:
            return None
        bounds.append((starts, scan_start + found.start()))
        starts = scan_start + found.end()
    bounds.append((starts, end))
    return bounds if len(bounds) == intervals else None


def _strip_jpeg(data: bytes, header: list[Segment], bounds: list[tuple[int, int]], height: int) -> bytes:
    """A JPEG of consecutive intervals: the kept header segments (the frame's height made `height`), their
    data with RSTn numbered from 0 between them, and EOI."""
    out = [SOI]
    for marker, segment in header:
        out.append(with_height(segment, height) if marker in SOF_SEQUENTIAL else segment)
    view = memoryview(data)
    for index, (start, stop) in enumerate(bounds):
        if index:
            out.append(bytes((0xFF, RST0 + (index - 1) % 8)))
        out.append(view[start:stop])
    out.append(EOI)
    return b"".join(out)
