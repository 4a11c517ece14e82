"""A large JPEG answer is encoded in strips on several threads (pipeline/jpeg_strips.py): what a user gets
must be a standard JPEG with the pixels one plain encode gives, readable by any decoder."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import DecodedImage, UndecodableImage, encode_image, jpeg_strips, overlap
from pipeline.jpeg_strips import encode_in_strips, join_strips, plain_encode, strip_count
from tests.conftest import IMAGES, helper_slots


def photo_like(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth gradients with texture and sharp edges: a picture whose every MCU row has detail."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([(x * 0.11 + y * 0.07) % 256, (x * 0.05 - y * 0.13) % 256, (x + y) * 0.03 % 256], -1)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (height, width, 3)).astype(np.float32), (0, 0), 1.5)
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    cv2.rectangle(img, (width // 5, height // 3), (width // 2, height // 2 + 17), (10, 240, 30), -1)
    return img if channels == 3 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def decode_cv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def strip_interval(height: int, width: int, strips: int, mcu: int = 16) -> tuple[int, int]:
    """(strip height in rows, MCUs per strip) as encode_in_strips chooses them."""
    strip_height = math.ceil(math.ceil(height / 16) / strips) * 16
    return strip_height, -(-width // mcu) * (strip_height // mcu)


@pytest.mark.parametrize("height,width,strips,quality", [
    (1080, 1920, 4, 92), (1081, 1917, 3, 92), (2160, 3840, 8, 75), (720, 1283, 5, 100), (50, 4000, 2, 30)])
def test_strips_give_the_bytes_of_one_encode_with_restart_markers_and_the_pixels_of_a_plain_one(
        height, width, strips, quality):
    img = photo_like(height, width)
    data = encode_in_strips(img, quality, strips=strips)
    _, interval = strip_interval(height, width, strips)
    # exactly what libjpeg writes for the whole image with a restart marker every strip
    with_restarts = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                               cv2.IMWRITE_JPEG_RST_INTERVAL, interval])[1].tobytes()
    assert data == with_restarts
    plain = plain_encode(img, quality)
    assert b"\xff\xdd" in data and data != plain
    # two decoders (OpenCV's libjpeg-turbo, Pillow's libjpeg) read the pixels of the plain encode
    assert np.array_equal(decode_cv(data), decode_cv(plain))
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., ::-1]
    assert np.array_equal(pil, np.asarray(Image.open(io.BytesIO(plain)).convert("RGB"))[..., ::-1])
    assert len(data) < len(plain) * 1.01  # a restart marker costs a few bytes


def test_a_grayscale_image_is_joined_on_its_8_row_mcus():
    img = photo_like(1000, 1500, channels=1)
    data = encode_in_strips(img, 90, strips=4)
    _, interval = strip_interval(1000, 1500, 4, mcu=8)
    assert data == cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90,
                                              cv2.IMWRITE_JPEG_RST_INTERVAL, interval])[1].tobytes()
    assert np.array_equal(decode_cv(data), decode_cv(plain_encode(img, 90)))


def test_a_real_photograph_answers_with_the_same_pixels():
    photo = cv2.imread(str(IMAGES / "solvay_conference_1927.png"), cv2.IMREAD_COLOR)
    if photo is None:
        pytest.skip("../shared/images is not here")
    data, media_type = encode_image(DecodedImage(bgr=photo, alpha=None, source_format="png"), "jpeg", 92)
    assert media_type == "image/jpeg" and b"\xff\xdd" in data  # 3000x2171: in strips
    assert np.array_equal(decode_cv(data), decode_cv(plain_encode(photo, 92)))


def test_how_many_strips_follows_the_size_alone(monkeypatch):
    for helpers in (1, 2, 8):  # the same bytes on every pod
        monkeypatch.setattr(overlap, "HELPER_THREADS", helpers)
        assert strip_count(480, 640) == 1  # a small answer: one plain encode
        assert strip_count(1080, 1920) == 4
        assert strip_count(2160, 3840) == 8
        assert strip_count(4320, 7680) == 8
        assert strip_count(20, 100_000) == 1  # a band of 16 rows is the least a strip holds


def test_a_small_answer_is_one_plain_encode(monkeypatch):
    img = photo_like(480, 640)
    data, _ = encode_image(DecodedImage(bgr=img, alpha=None, source_format="jpeg"), "jpeg", 92)
    assert data == plain_encode(img, 92) and b"\xff\xdd" not in data


def test_a_large_answer_is_encoded_in_strips_through_encode_image(monkeypatch):
    helper_slots(monkeypatch, 1)  # 4 strips, wherever they run
    img = photo_like(1080, 1920)
    data, _ = encode_image(DecodedImage(bgr=img, alpha=None, source_format="jpeg"), "jpeg", 92)
    assert data.count(b"\xff\xdd") == 1 and data.count(b"\xff\xd0") == 1 and data.count(b"\xff\xd2") == 1
    assert np.array_equal(decode_cv(data), decode_cv(plain_encode(img, 92)))


def test_strips_that_do_not_fit_together_are_refused_and_the_image_is_encoded_plainly(monkeypatch):
    img = photo_like(256, 512)
    top, bottom = plain_encode(img[:128], 90), plain_encode(img[128:], 60)  # other quantisation tables
    assert join_strips([top, bottom], 256, 128) is None
    assert join_strips([top, plain_encode(img[128:], 90)], 256, 128) is not None
    assert join_strips([top, b"not a jpeg"], 256, 128) is None
    assert join_strips([top, top], 256, 120) is None  # not a whole number of MCU rows

    monkeypatch.setattr(jpeg_strips, "join_strips", lambda *args: None)
    assert encode_in_strips(img, 90, strips=2) == plain_encode(img, 90)


def test_a_very_wide_image_gets_more_strips_than_asked_so_each_fits_the_restart_interval():
    img = photo_like(400, 40_000)  # a 16-row band of it is 10,000 gray-sized MCUs: at most 6 bands a strip
    data = encode_in_strips(img, 85, strips=2)
    assert data.count(b"\xff\xdd") == 1 and data.count(b"\xff\xd3") == 1  # 5 strips (RST0..RST3)
    assert np.array_equal(decode_cv(data), decode_cv(plain_encode(img, 85)))


def test_an_image_taller_than_a_jpeg_holds_is_refused_as_before_not_sent_broken(monkeypatch):
    tall = np.zeros((65_520, 16, 3), np.uint8)
    assert encode_in_strips(tall, 90) is None and encode_in_strips(tall, 90, strips=8) is None
    with pytest.raises(UndecodableImage, match="could not encode"):
        encode_image(DecodedImage(bgr=tall), "jpeg", 90)
