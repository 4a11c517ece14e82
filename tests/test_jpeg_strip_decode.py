"""A large JPEG with restart markers is decoded in strips (pipeline/jpeg_strip_decode.py): the pixels must be
exactly OpenCV's decode of the whole file, and anything that cannot be cut safely takes the one-piece path."""

from __future__ import annotations

import contextlib
import io
import struct
import threading

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import ImageLimits, decode_image, jpeg_strips, overlap
from pipeline import images as images_module
from pipeline.errors import ImageError
from pipeline.jpeg_strip_decode import decode_in_strips, has_restarts

from .conftest import IMAGES, helper_slots
from .test_jpeg_strips import photo_like

LIMITS = ImageLimits()


def jpeg(pixels: np.ndarray, interval: int = 0, quality: int = 92, sampling: int | None = None) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_RST_INTERVAL, interval]
    if sampling is not None:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    return cv2.imencode(".jpg", pixels, params)[1].tobytes()


def opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


ROWS_1080 = 120  # MCUs in a 16-px row of 1920


@pytest.mark.parametrize("name,height,width,interval,sampling", [
    ("4:2:0, a marker every MCU row", 1080, 1920, ROWS_1080, None),
    ("4:2:0, every third row", 1080, 1920, 3 * ROWS_1080, None),
    ("4:2:0, odd size", 1081, 1917, 120, None),
    ("4:2:2", 1080, 1920, ROWS_1080, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422),
    ("4:4:4", 1080, 1920, 240, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    ("4K 4:2:0, every second row", 2160, 3840, 480, None),
])
def test_strips_give_exactly_the_pixels_of_one_decode(name, height, width, interval, sampling):
    data = jpeg(photo_like(height, width, seed=3), interval, sampling=sampling)
    for threads in (2, 3, 8):
        pixels = decode_in_strips(data, threads=threads)
        assert pixels is not None, name
        assert np.array_equal(pixels, opencv(data)), (name, threads)


def test_gray_and_this_functions_own_answers_are_cut_too():
    gray = jpeg(photo_like(1000, 1500, channels=1), interval=2 * 188)  # 8-px MCUs: 188 a row
    assert np.array_equal(decode_in_strips(gray, threads=4), opencv(gray))
    ours = jpeg_strips.encode_in_strips(photo_like(2160, 3840), 90)  # 8 strips, restart markers between them
    assert np.array_equal(decode_in_strips(ours, threads=4), opencv(ours))
    ours_1080 = jpeg_strips.encode_in_strips(photo_like(1080, 1920), 90)  # 4 intervals: 4:2:0's margins cost
    assert decode_in_strips(ours_1080, threads=4) is None  # more than two strips of them would save


def test_real_photographs_with_restart_markers_decode_the_same():
    for name in ("biden.jpg", "obama.jpg"):  # a restart marker every MCU row, 4:4:4
        path = IMAGES / name
        if not path.is_file():
            pytest.skip("../shared/images is not here")
        data = path.read_bytes()
        assert has_restarts(data)
        assert np.array_equal(decode_in_strips(data, threads=4), opencv(data)), name


def test_what_cannot_be_cut_safely_is_left_to_the_one_piece_decode():
    img = photo_like(1080, 1920)
    assert decode_in_strips(jpeg(img), threads=4) is None  # no restart markers
    assert decode_in_strips(jpeg(img, interval=100), threads=4) is None  # an interval that is not whole rows
    assert decode_in_strips(jpeg(photo_like(480, 640), interval=40), threads=4) is None  # too small to gain
    progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL,
                                             ROWS_1080])[1].tobytes()
    assert decode_in_strips(progressive, threads=4) is None
    marked = jpeg(img, interval=ROWS_1080)
    second = marked.index(b"\xff\xd1")
    out_of_order = marked[:second + 1] + b"\xd3" + marked[second + 2:]  # RST1 where RST3 stands
    assert decode_in_strips(out_of_order, threads=4) is None
    cut_short = marked[:marked.index(b"\xff\xd5")] + b"\xff\xd9"  # fewer intervals than the frame has rows
    assert decode_in_strips(cut_short, threads=4) is None


def test_the_last_of_two_restart_intervals_is_the_one_cut_on():
    """libjpeg reads the DRI nearest the scan; cutting on an earlier one gave a garbled lower half."""
    marked = jpeg(photo_like(1080, 1920), interval=2 * ROWS_1080 + 1)  # not whole rows: one-piece decode
    dri = marked.index(b"\xff\xdd")
    for earlier in (ROWS_1080, 2 * ROWS_1080):  # whole rows, and the other interval's count of markers
        twice = marked[:dri] + b"\xff\xdd\x00\x04" + earlier.to_bytes(2, "big") + marked[dri:]
        assert np.array_equal(opencv(twice), opencv(marked))
        assert decode_in_strips(twice, threads=4) is None
    whole = jpeg(photo_like(1080, 1920), interval=ROWS_1080)
    dri = whole.index(b"\xff\xdd")
    twice = whole[:dri] + b"\xff\xdd\x00\x04" + (ROWS_1080 + 1).to_bytes(2, "big") + whole[dri:]
    assert np.array_equal(decode_in_strips(twice, threads=4), opencv(whole))


def test_a_second_frame_header_is_not_cut_past_the_pixel_limit():
    """SOF0 says 8000x8000 and a SOF2 after it 100x100: Pillow checks the limit on the last, libjpeg
    refuses two frames. Cut on the first, the strips made a 64-MP image of a 400-byte file."""
    small = jpeg(np.zeros((8, 8), np.uint8))
    sof, sos = small.index(b"\xff\xc0"), small.index(b"\xff\xda")
    sof0 = small[sof:sof + 2 + struct.unpack(">H", small[sof + 2:sof + 4])[0]]
    huge = sof0[:5] + struct.pack(">HH", 8000, 8000) + sof0[9:]
    tiny = b"\xff\xc2" + sof0[2:5] + struct.pack(">HH", 100, 100) + sof0[9:]
    dri = b"\xff\xdd\x00\x04" + struct.pack(">H", 1000 * 50)  # 50 MCU rows of 1000: 20 intervals
    scan = b"\x00".join(bytes((0xFF, 0xD0 + i % 8)) for i in range(19))
    data = (small[:sof] + huge + tiny + dri + small[sof + len(sof0):sos]
            + small[sos:sos + 2 + struct.unpack(">H", small[sos + 2:sos + 4])[0]] + b"\x00" + scan + b"\x00\xff\xd9")
    assert decode_in_strips(data, threads=4) is None
    with pytest.raises(ImageError):
        decode_image(data, LIMITS)
    one_frame = data.replace(tiny, b"")  # a frame the caller did not check is not cut either
    assert decode_in_strips(one_frame, threads=4, size=(100, 100)) is None


def test_exif_pillow_cannot_read_leaves_the_decode_to_opencv():
    out = io.BytesIO()
    Image.fromarray(photo_like(64, 64)).save(out, "JPEG", dpi=(72, 72), restart_marker_rows=1)
    payload = b"Exif\x00\x00not a tiff header"
    data = out.getvalue()
    data = data[:20] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[20:]  # after APP0
    assert np.array_equal(decode_image(data, LIMITS).bgr, opencv(data))


def test_a_cameras_exif_thumbnail_does_not_hide_the_restart_markers():
    thumbnail = jpeg(photo_like(60, 80))  # a scan of its own, before the photograph's headers
    payload = b"Exif\x00\x00" + thumbnail
    marked = jpeg(photo_like(1080, 1920), interval=ROWS_1080)
    data = marked[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + marked[2:]
    assert has_restarts(data) and not has_restarts(jpeg(photo_like(1080, 1920)))
    assert np.array_equal(decode_in_strips(data, threads=4), opencv(data))


def test_strips_are_cut_only_where_they_gain():
    coarse = jpeg(photo_like(2160, 3840), interval=240 * 68)  # 4:2:0 in two intervals: each strip would be the image
    assert decode_in_strips(coarse, threads=4) is None
    marked = jpeg(photo_like(1080, 1920), interval=ROWS_1080)
    with pytest.MonkeyPatch.context() as busy:  # every helper busy: strips one after another only add margins
        helper_slots(busy, overlap.HELPER_THREADS, busy=overlap.HELPER_THREADS)
        assert decode_in_strips(marked) is None
    assert overlap.free_helpers() == overlap.HELPER_THREADS


def turned(data: bytes, orientation: int) -> bytes:
    """`data` re-saved by Pillow with restart markers and an EXIF orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, "JPEG", quality=90, exif=exif.tobytes(), restart_marker_rows=1)
    return out.getvalue()


def test_decode_image_cuts_an_upright_jpeg_but_leaves_turning_to_opencv(monkeypatch):
    cut: list[str] = []
    real = images_module.decode_in_strips
    monkeypatch.setattr(images_module, "decode_in_strips",
                        lambda data, **kw: cut.append(threading.current_thread().name) or real(data, **kw))
    helper_slots(monkeypatch, 4)  # strips whatever the runner's CPUs
    base = jpeg(photo_like(1080, 1920))
    upright, sideways = turned(base, 1), turned(base, 6)
    assert has_restarts(upright) and has_restarts(sideways)

    image = decode_image(upright, LIMITS)
    assert len(cut) == 1 and np.array_equal(image.bgr, opencv(upright))
    image = decode_image(sideways, LIMITS)
    assert len(cut) == 1  # EXIF says turn it: one piece, as OpenCV turns it
    assert image.bgr.shape == (1920, 1080, 3) and np.array_equal(image.bgr, opencv(sideways))


def test_damaged_files_with_restart_markers_never_fail_the_cutting_itself():
    rng = np.random.default_rng(7)
    data = bytearray(jpeg(photo_like(1080, 1920), interval=ROWS_1080))
    scan = data.index(b"\xff\xda")
    for _ in range(300):
        damaged = bytearray(data)
        for at in rng.integers(2, len(data) - 2, size=int(rng.integers(1, 4))):
            if rng.random() < 0.3:
                at = int(rng.integers(2, scan + 12))  # in the headers: lengths, sizes, sampling factors
            damaged[at] = int(rng.integers(0, 256))
        pixels = decode_in_strips(bytes(damaged), threads=4)  # an image or None, never an exception
        assert pixels is None or pixels.dtype == np.uint8
        with contextlib.suppress(ImageError):  # a clear verdict on the file; anything else fails the test
            decode_image(bytes(damaged), LIMITS)


def test_a_frame_header_that_says_nothing_usable_is_not_cut():
    from pipeline.jpeg_markers import frame

    good = jpeg(photo_like(1080, 1920), interval=ROWS_1080)
    at = good.index(b"\xff\xc0")
    sof = good[at:at + 2 + int.from_bytes(good[at + 2:at + 4], "big")]
    assert frame([(0xC0, sof)]) is not None
    assert frame([(0xC0, sof[:8])]) is None  # cut short
    assert frame([(0xC0, sof[:5] + b"\x00\x00" + sof[7:])]) is None  # no rows
    assert frame([(0xC0, sof[:11] + b"\x00" + sof[12:])]) is None  # a sampling factor of 0
    zero_factor = good[:at + 11] + b"\x00" + good[at + 12:]
    assert decode_in_strips(zero_factor, threads=4) is None


def test_the_strip_decode_bench_compares_call_for_call_with_the_same_pixels(monkeypatch, capsys):
    helper_slots(monkeypatch, 3)  # strips even on a 1-CPU runner
    from bench.strip_decode import main

    rows = main(["--calls", "2", "--rounds", "1"])
    assert {row[0] for row in rows} >= {"1080p+RST", "4k+RST"}
    assert all(row[-1] == "yes" and row[3] > 0 and row[4] > 0 for row in rows), rows
    assert "strips / one" in capsys.readouterr().out
