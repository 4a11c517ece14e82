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

import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .config import usable_cpus

# threads of this process's encoder pool: a strip per thread (fewer on fewer CPUs)
ENCODE_THREADS = min(8, usable_cpus())
# a strip is at least this many pixels: below, a thread's hand-off and a strip's headers (about 600
# bytes written per strip) cost more than its share of the encode saves; 1080p gets 4 strips, 4K 8
MIN_STRIP_PIXELS = 480_000
MCU_ROWS_MULTIPLE = 16  # strip heights are multiples of the tallest MCU (4:2:0: 16 rows, gray: 8)
MAX_SIDE = 65_500  # what libjpeg (and so cv2.imencode) encodes; the frame header holds 16 bits
MAX_INTERVAL = 0xFFFF  # DRI's 16 bits: the most MCUs of one strip
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
SOS, DRI, SOF_BASELINE = 0xDA, 0xDD, (0xC0, 0xC1)  # markers: start of scan, restart interval, frame
TABLE_MARKERS = (0xDB, 0xC4)  # quantisation and Huffman tables: every strip must carry the first's

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _encode_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="jpeg-strip")
        return _pool


def plain_encode(bgr: np.ndarray, quality: int) -> bytes | None:
    """One cv2.imencode of the whole image at `quality`; None when OpenCV refuses."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


def strip_count(height: int, width: int, threads: int | None = None) -> int:
    """How many strips an image of this size is encoded in: one per MIN_STRIP_PIXELS, at most one per
    thread and per 16-row band; 1 means one plain encode."""
    threads = ENCODE_THREADS if threads is None else threads
    return max(1, min(threads, (height * width) // MIN_STRIP_PIXELS, height // MCU_ROWS_MULTIPLE))


def encode_in_strips(bgr: np.ndarray, quality: int, strips: int | None = None) -> bytes | None:
    """JPEG bytes of `bgr` (HxWx3 or HxW uint8) at `quality`, encoded as `strips` strips side by side on
    the encoder threads (default: `strip_count`); None when OpenCV refuses to encode."""
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
    parts = list(_encode_pool().map(lambda piece: plain_encode(piece, quality), pieces))
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
    headers, first_scan = split[0]  # type: ignore[misc]
    tables = [segment for marker, segment in headers if marker in TABLE_MARKERS]
    for other_headers, _ in split[1:]:  # type: ignore[misc]
        if [segment for marker, segment in other_headers if marker in TABLE_MARKERS] != tables:
            return None
    interval = _restart_interval(headers, strip_height)
    if interval is None:
        return None
    out = [SOI]
    for marker, segment in headers:
        if marker in SOF_BASELINE:
            segment = segment[:5] + struct.pack(">H", height) + segment[7:]
        elif marker == SOS:
            out.append(struct.pack(">BBHH", 0xFF, DRI, 4, interval))
        out.append(segment)
    for index, (_, scan) in enumerate(split):  # type: ignore[misc]
        if index:
            out.append(bytes((0xFF, 0xD0 + (index - 1) % 8)))
        out.append(scan)
    out.append(EOI)
    return b"".join(out)


def _split(jpeg: bytes) -> tuple[list[tuple[int, bytes]], bytes] | None:
    """(the marker segments from after SOI up to and with SOS, the entropy-coded data before EOI), or None
    for anything but a single-scan baseline JPEG without restart markers."""
    if not jpeg.startswith(SOI) or not jpeg.endswith(EOI):
        return None
    segments: list[tuple[int, bytes]] = []
    at = len(SOI)
    while at + 4 <= len(jpeg) and jpeg[at] == 0xFF:
        marker = jpeg[at + 1]
        (length,) = struct.unpack_from(">H", jpeg, at + 2)
        segments.append((marker, jpeg[at:at + 2 + length]))
        at += 2 + length
        if marker == SOS:
            break
    else:
        return None
    markers = [marker for marker, _ in segments]
    if DRI in markers or not any(marker in SOF_BASELINE for marker in markers):
        return None
    return segments, jpeg[at:-len(EOI)]


def _restart_interval(headers: list[tuple[int, bytes]], strip_height: int) -> int | None:
    """MCUs in one strip, from the frame header's width and sampling factors; None when the strip is not
    a whole number of MCU rows or the count does not fit DRI's 16 bits."""
    frame = next(segment for marker, segment in headers if marker in SOF_BASELINE)
    width, components = struct.unpack_from(">HB", frame, 7)
    factors = [frame[10 + 3 * i + 1] for i in range(components)]
    mcu_width = 8 * max(f >> 4 for f in factors)
    mcu_height = 8 * max(f & 0x0F for f in factors)
    if strip_height % mcu_height:
        return None
    interval = -(-width // mcu_width) * (strip_height // mcu_height)
    return interval if 0 < interval <= MAX_INTERVAL else None
