"""JPEG encoding of a large image on several threads: horizontal strips joined by restart markers.

Why: encoding is one of the largest CPU stages of a request (1080p 6-7 ms, 4K 25-28 ms with OpenCV's
libjpeg-turbo) and libjpeg encodes on one core, so at low concurrency it adds straight to latency while
other cores sit idle. A baseline JPEG may carry restart markers (DRI/RSTn, ITU T.81 B.2.4.4): at each one
the entropy coder starts afresh (DC predictions reset, byte-aligned), so the data between two markers
depends only on the pixels of those MCUs. Each strip, a whole number of MCU rows high, is therefore
encoded on its own (cv2.imencode releases the GIL) and the strips' entropy-coded data is joined with
RST0..RST7 between them under the first strip's headers, with the full height in the frame header and
a DRI giving the strip's MCU count. The bytes are exactly those of one cv2.imencode of the whole image
with IMWRITE_JPEG_RST_INTERVAL set to that count (tests/test_jpeg_strips.py compares them), and they
decode to the same pixels as an encode without restart markers: libjpeg's colour conversion, chroma
downsampling and DCT never look across an MCU row's bottom edge, and every strip but the last ends on one.

No maintained Python library encodes one JPEG on several threads; this module only splits pixels and
joins bytes. A strip never holds more MCUs than DRI's 16 bits count (a huge image gets more, shorter
strips than threads), an image past JPEG's 65,500 rows or columns gets OpenCV's plain encode (which
refuses it), and strips that do not have the headers expected (other tables, another frame type) are
thrown away for one plain encode.
"""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np

from . import overlap
from .jpeg_markers import (
    EOI,
    RST0,
    SOF_SEQUENTIAL,
    SOI,
    SOS,
    TABLE_MARKERS,
    Segment,
    dri_segment,
    frame,
    header_segments,
    restart_interval,
    with_height,
)

# a strip is at least this many pixels: below, a thread's hand-off and a strip's headers (about 600
# bytes written per strip) cost more than its share of the encode saves; 1080p gets 4 strips, 4K 8
MIN_STRIP_PIXELS = 480_000
MAX_STRIPS = 8  # 4K: a strip per thread of a 16-CPU GPU node's helpers
MCU_ROWS_MULTIPLE = 16  # strip heights are multiples of the tallest MCU (4:2:0: 16 rows, gray: 8)
MAX_SIDE = 65_500  # what libjpeg (and so cv2.imencode) encodes; the frame header holds 16 bits
MAX_INTERVAL = 0xFFFF  # DRI's 16 bits: the most MCUs of one strip


def plain_encode(bgr: np.ndarray, quality: int) -> bytes | None:
    """One cv2.imencode of the whole image at `quality`; None when OpenCV refuses."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


def strip_count(height: int, width: int) -> int:
    """How many strips an image of this size is cut in: one per MIN_STRIP_PIXELS, at most MAX_STRIPS and
    one per 16-row band; 1 means one plain encode. It depends on the size alone, so the same image gives
    the same bytes on every pod, however many CPUs it has and however busy it is (pipeline/overlap.py
    runs the strips on as many threads as are free)."""
    return max(1, min(MAX_STRIPS, (height * width) // MIN_STRIP_PIXELS, height // MCU_ROWS_MULTIPLE))


def encode_in_strips(bgr: np.ndarray, quality: int, strips: int | None = None) -> bytes | None:
    """JPEG bytes of `bgr` (HxWx3 or HxW uint8) at `quality`, encoded as `strips` strips (default:
    `strip_count`), each on a helper thread that is free, the others one after another in this thread
    (pipeline/overlap.py: under load nothing waits for helpers); None when OpenCV refuses to encode."""
    height, width = bgr.shape[:2]
    strips = strip_count(height, width) if strips is None else strips
    if strips <= 1 or height > MAX_SIDE or width > MAX_SIDE:  # too large for one JPEG: OpenCV says no
        return plain_encode(bgr, quality)
    bands = -(-height // MCU_ROWS_MULTIPLE)
    # a strip's MCUs must fit DRI: a huge image gets more (shorter) strips than threads, queued on them
    smallest_mcu = 8  # gray; 4:2:0 colour has 16x16 MCUs, so this bounds both
    mcus_per_band = -(-width // smallest_mcu) * (MCU_ROWS_MULTIPLE // smallest_mcu)
    strip_bands = min(-(-bands // strips), MAX_INTERVAL // mcus_per_band)
    strip_height = strip_bands * MCU_ROWS_MULTIPLE
    pieces = [bgr[top:top + strip_height] for top in range(0, height, strip_height)]
    parts = overlap.each(partial(plain_encode, quality=quality), pieces)
    if any(part is None for part in parts):
        return None
    joined = join_strips(parts, height, strip_height)  # type: ignore[arg-type]
    return joined if joined is not None else plain_encode(bgr, quality)


def join_strips(parts: list[bytes], height: int, strip_height: int) -> bytes | None:
    """One JPEG of `height` rows from baseline JPEGs of consecutive strips, each `strip_height` rows but the
    last: the first's headers, its frame height made `height`, a DRI of one strip's MCUs before the scan,
    and the scans' data with RSTn between them. None when the parts do not fit together (other tables,
    not baseline, an interval past DRI's 16 bits) or `height` is more than a JPEG holds."""
    if height > MAX_SIDE:
        return None
    split = [_split(part) for part in parts]
    if any(s is None for s in split):
        return None
    headers, _ = split[0]  # type: ignore[misc]
    tables = [segment for marker, segment in headers if marker in TABLE_MARKERS]
    for other_headers, _ in split[1:]:  # type: ignore[misc]
        if [segment for marker, segment in other_headers if marker in TABLE_MARKERS] != tables:
            return None
    interval = _restart_interval(headers, strip_height)
    if interval is None:
        return None
    out = [SOI]
    for marker, segment in headers:
        if marker in SOF_SEQUENTIAL:
            segment = with_height(segment, height)
        elif marker == SOS:
            out.append(dri_segment(interval))
        out.append(segment)
    for index, (_, scan) in enumerate(split):  # type: ignore[misc]
        if index:
            out.append(bytes((0xFF, RST0 + (index - 1) % 8)))
        out.append(scan)
    out.append(EOI)
    return b"".join(out)


def _split(jpeg: bytes) -> tuple[list[Segment], bytes] | None:
    """(the marker segments from after SOI up to and with SOS, the entropy-coded data before EOI), or None
    for anything but a single-scan sequential JPEG without restart markers."""
    cut = header_segments(jpeg)
    if cut is None or not jpeg.endswith(EOI):
        return None
    segments, scan_start = cut
    if restart_interval(segments) or frame(segments) is None:
        return None
    return segments, jpeg[scan_start:-len(EOI)]


def _restart_interval(headers: list[Segment], strip_height: int) -> int | None:
    """MCUs in one strip, from the frame header's width and sampling factors; None when the strip is not
    a whole number of MCU rows or the count does not fit DRI's 16 bits."""
    layout = frame(headers)
    if layout is None or strip_height % layout.mcu_height:
        return None
    interval = layout.mcus_per_row * (strip_height // layout.mcu_height)
    return interval if 0 < interval <= MAX_INTERVAL else None
