"""IMAGE_CODEC=nvimgcodec under load: an image whose GPU decoder (encoder) is busy with another image is
decoded (encoded) by OpenCV at once, with the default codec's result, instead of queueing; each image is
counted by the path that did it, and the function exports the counts on /metrics.

nvImageCodec needs a CUDA device and is not installed here, so its Python API is played by
tests/nvimgcodec_standin.py (on top of OpenCV), whose `Gate` holds the device decoder or encoder busy.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from pipeline import ImageLimits
from pipeline.gpu_jpeg import GpuJpeg, open_gpu_jpeg
from pipeline.images import DecodedImage, decode_image, encode_image
from pipeline.jpeg_strips import plain_encode

from . import nvimgcodec_standin as standin
from .conftest import REPO, fuse_multipart, shared_file
from .server import FunctionServer

LIMITS = ImageLimits()
WAIT_S = 30  # only a guard against a hang: every wait below ends on an event long before


class Worker(threading.Thread):
    """Runs `fn` in its own thread, keeping its result or exception for the test thread."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # re-raised in the test thread by value()
            self.error = exc

    def value(self) -> Any:
        self.join(WAIT_S)
        assert not self.is_alive(), "the call never returned"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def codec() -> GpuJpeg:
    return open_gpu_jpeg(module=standin)


@pytest.fixture(scope="module")
def obama() -> bytes:
    return shared_file("images", "obama.jpg").read_bytes()


@pytest.fixture(scope="module")
def turned() -> bytes:
    """A 160x96 JPEG whose EXIF orientation (6: turn 90 degrees clockwise) makes it 96x160 when applied."""
    rgb = np.zeros((96, 160, 3), np.uint8)
    rgb[:, :80, 0] = 220  # left half red, right half green: the turn is visible in the pixels
    rgb[:, 80:, 1] = 180
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def opencv_decoded(data: bytes) -> np.ndarray:
    """The default codec's pixels (pipeline/images.py without a codec)."""
    return decode_image(data, LIMITS).bgr


def counts(codec: GpuJpeg) -> dict[str, int]:
    return {f"{op} {name}": value for (op, name), value in codec.counts.snapshot().items()}


def test_open_gpu_jpeg_passes_its_check_with_the_standin_and_the_check_counts_no_image(codec):
    assert (codec.bgr_decode, codec.bgr_encode, codec.overflow) == (True, True, True)
    assert codec.decoder.calls >= 1 and codec.encoder.calls >= 1  # the check ran on the device
    assert counts(codec) == {"decode nvimgcodec": 0, "decode opencv": 0, "encode nvimgcodec": 0, "encode opencv": 0}


def test_an_idle_gpu_decodes_and_encodes_every_image_and_counts_it_as_nvimgcodec(codec, obama, turned):
    calls = codec.decoder.calls, codec.encoder.calls
    image = decode_image(obama, LIMITS, codec)
    assert np.array_equal(image.bgr, opencv_decoded(obama))
    assert np.array_equal(decode_image(turned, LIMITS, codec).bgr, opencv_decoded(turned))
    data, media_type = encode_image(image, "jpeg", 77, codec)
    assert media_type == "image/jpeg"
    # the stand-in encodes as one cv2.imencode does; the default encodes this 2.7 Mpx photo in strips: the same pixels
    assert data == plain_encode(image.bgr, 77)
    assert np.array_equal(opencv_decoded(data), opencv_decoded(encode_image(image, "jpeg", 77)[0]))
    assert (codec.decoder.calls, codec.encoder.calls) == (calls[0] + 2, calls[1] + 1)
    assert counts(codec) == {"decode nvimgcodec": 2, "decode opencv": 0, "encode nvimgcodec": 1, "encode opencv": 0}


def test_a_decode_while_the_gpu_decoder_is_busy_is_done_by_opencv_at_once(codec, obama, turned):
    gate = codec.decoder.gate = standin.Gate()
    first = Worker(lambda: decode_image(obama, LIMITS, codec))
    assert gate.entered.wait(WAIT_S)  # the first image holds the device decoder
    second = Worker(lambda: decode_image(turned, LIMITS, codec).bgr)
    second.join(WAIT_S)
    done_while_held = not second.is_alive() and first.is_alive()
    gate.release.set()
    assert done_while_held  # the second image did not wait for the first
    assert np.array_equal(second.value(), opencv_decoded(turned))
    assert second.value().shape == (160, 96, 3)  # EXIF orientation applied, as OpenCV's default decode does
    assert np.array_equal(first.value().bgr, opencv_decoded(obama))
    assert counts(codec) == {"decode nvimgcodec": 1, "decode opencv": 1, "encode nvimgcodec": 0, "encode opencv": 0}


def test_an_encode_while_the_gpu_encoder_is_busy_is_done_by_opencv_at_once(codec, obama, turned):
    big, small = DecodedImage(opencv_decoded(obama)), DecodedImage(opencv_decoded(turned))
    gate = codec.encoder.gate = standin.Gate()
    first = Worker(lambda: encode_image(big, "jpeg", 92, codec)[0])
    assert gate.entered.wait(WAIT_S)
    second = Worker(lambda: encode_image(small, "jpeg", 61, codec)[0])
    second.join(WAIT_S)
    done_while_held = not second.is_alive() and first.is_alive()
    gate.release.set()
    assert done_while_held
    assert second.value() == encode_image(small, "jpeg", 61)[0]  # byte for byte what the default codec writes
    assert second.value() == cv2.imencode(".jpg", small.bgr, [cv2.IMWRITE_JPEG_QUALITY, 61])[1].tobytes()
    assert cv2.imdecode(np.frombuffer(first.value(), np.uint8), cv2.IMREAD_COLOR).shape == big.bgr.shape
    assert counts(codec) == {"decode nvimgcodec": 0, "decode opencv": 0, "encode nvimgcodec": 1, "encode opencv": 1}


def test_decode_and_encode_have_separate_devices_a_busy_decoder_leaves_encodes_on_the_gpu(codec, obama, turned):
    gate = codec.decoder.gate = standin.Gate()
    held = Worker(lambda: codec.decode(obama))
    assert gate.entered.wait(WAIT_S)
    encoding = Worker(lambda: codec.encode(opencv_decoded(turned), 90))
    encoding.join(WAIT_S)
    done_while_held = not encoding.is_alive() and held.is_alive()
    gate.release.set()
    assert done_while_held
    held.value()
    assert encoding.value() == encode_image(DecodedImage(opencv_decoded(turned)), "jpeg", 90)[0]
    assert counts(codec) == {"decode nvimgcodec": 1, "decode opencv": 0, "encode nvimgcodec": 1, "encode opencv": 0}


def test_without_overflow_a_second_decode_waits_for_the_device(obama, turned):
    queued = GpuJpeg(module=standin, overflow=False)
    gate = queued.decoder.gate = standin.Gate()
    first = Worker(lambda: queued.decode(obama))
    assert gate.entered.wait(WAIT_S)
    second = Worker(lambda: queued.decode(turned))
    second.join(0.3)
    assert second.is_alive()  # it waits for the device (with overflow it would be done by now)
    gate.release.set()
    assert np.array_equal(second.value(), opencv_decoded(turned)) and first.value() is not None
    assert queued.decoder.calls == 2  # both went to the device: the second queued behind the first
    assert counts(queued)["decode nvimgcodec"] == 2 and counts(queued)["decode opencv"] == 0


def test_concurrent_images_come_out_right_and_each_is_counted_once(codec, turned):
    want_pixels = opencv_decoded(turned)
    want_bytes = encode_image(DecodedImage(want_pixels), "jpeg", 85)[0]

    def work() -> bool:
        ok = True
        for _ in range(4):
            ok &= np.array_equal(decode_image(turned, LIMITS, codec).bgr, want_pixels)
            ok &= codec.encode(want_pixels, 85) == want_bytes
        return ok

    workers = [Worker(work) for _ in range(6)]
    assert all(w.value() for w in workers)
    done = counts(codec)
    assert done["decode nvimgcodec"] + done["decode opencv"] == 24
    assert done["encode nvimgcodec"] + done["encode opencv"] == 24


def _codec_series(server: FunctionServer) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return {f"{s.labels['op']} {s.labels['codec']}": s.value for family in text_string_to_metric_families(text)
            if family.name == "facefusion_image_codec_images" for s in family.samples if s.name.endswith("_total")}


def test_the_function_with_nvimgcodec_serves_the_default_pixels_and_counts_its_images_on_metrics(
        model_root, tmp_path, fuser):
    """The served function imports `nvidia.nvimgcodec` (here the stand-in, put on its PYTHONPATH) through
    the real loader, its start-up check and warm-up; one request on an idle GPU decodes both images and
    encodes the result there."""
    expected = fuser.fuse_bytes(shared_file("images", "obama.jpg").read_bytes(),
                                shared_file("images", "biden.jpg").read_bytes())
    path = standin.install_as_nvidia_nvimgcodec(tmp_path / "site")
    server = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"),
                             "IMAGE_CODEC": "nvimgcodec", "PYTHONPATH": f"{path}:{REPO}"})
    try:
        assert requests.get(server.url + "/readyz", timeout=5).status_code == 200, server.logs()
        before = _codec_series(server)
        assert set(before) == {"decode nvimgcodec", "decode opencv", "encode nvimgcodec", "encode opencv"}
        r = fuse_multipart(server)
        assert r.status_code == 200, r.text
        # the stand-in encodes as one cv2.imencode; the default encodes large answers in strips: same pixels
        assert np.array_equal(opencv_decoded(r.content), opencv_decoded(expected.data))
        after = _codec_series(server)
        assert {key: after[key] - before[key] for key in after} == {
            "decode nvimgcodec": 2, "decode opencv": 0, "encode nvimgcodec": 1, "encode opencv": 0}
    finally:
        server.stop()


def test_the_codec_bench_measures_overflow_against_queueing_for_the_device(monkeypatch):
    """bench.codec's GPU rows, run here with the stand-in as nvImageCodec: the server's codec (overflow),
    the same pair with every image queued (the behaviour before), and one pair per thread; the split of the
    threaded run between the GPU and OpenCV is a column of its own."""
    shared_file("images", "obama.jpg")  # the bench's 1080p frame is built from it
    monkeypatch.setattr("pipeline.gpu_jpeg.import_nvimgcodec", lambda: standin)
    from bench.codec import main

    result = main(["--reps", "2", "--threads", "3", "--sizes", "1080p"])
    rows = {(row["codec"], row["op"]): row for row in result["rows"]}
    for op in ("decode", "encode"):
        for name in ("nvimgcodec", "nvimgcodec/queue", "nvimgcodec/thread"):
            row = rows[(name, op)]
            assert not row["error"] and row["ms_1_thread"] > 0 and row["per_s_threads"] > 0, row
        assert rows[("nvimgcodec/queue", op)]["gpu_share"] == 1.0  # nothing overflowed
        assert 0 < rows[("nvimgcodec", op)]["gpu_share"] <= 1  # some image always holds the device
        assert rows[("nvimgcodec/thread", op)]["gpu_share"] is None
    assert rows[("nvimgcodec", "decode")]["mean_abs_diff"] == 0.0
    assert "gpu share" in result["table"] and "nvimgcodec/queue" in result["table"]


def test_the_gpu_codec_opens_while_the_models_load(model_root, tmp_path, monkeypatch):
    """IMAGE_CODEC=nvimgcodec: the codec is opened on its own thread while the models load (opened one after
    the other, four workers on the H200 took 6.8 s to turn ready against 3.4 s). Here the codec's opening
    waits until the models' load has begun, which, one after the other, would never happen; a codec that
    cannot open still fails the load."""
    import pipeline.loader as loader
    from pipeline import Settings
    from pipeline.gpu_jpeg import GpuJpegUnavailable

    started = threading.Event()
    real_load = loader.load_models

    def load(settings):
        started.set()
        return real_load(settings)

    def open_codec(device_id: int = 0) -> GpuJpeg:
        assert started.wait(10), "the codec was opened before the models began to load"
        return open_gpu_jpeg(module=standin)

    monkeypatch.setattr(loader, "load_models", load)
    monkeypatch.setattr("pipeline.gpu_jpeg.open_gpu_jpeg", open_codec)
    monkeypatch.setattr("pipeline.gpu_jpeg.import_nvimgcodec", lambda: standin)  # installed, as on a GPU pod
    settings = Settings.from_env({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"),
                                  "IMAGE_CODEC": "nvimgcodec"})
    fuser = loader.load_fuser(settings)
    assert isinstance(fuser.codec, GpuJpeg) and fuser.models.models

    def cannot(device_id: int = 0) -> GpuJpeg:
        raise GpuJpegUnavailable("IMAGE_CODEC=nvimgcodec, but nvImageCodec cannot be imported")

    monkeypatch.setattr("pipeline.gpu_jpeg.open_gpu_jpeg", cannot)
    with pytest.raises(GpuJpegUnavailable, match="nvImageCodec"):
        loader.load_fuser(settings)
