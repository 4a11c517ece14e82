"""JPEG decode and encode on the GPU with NVIDIA nvImageCodec (opt-in: IMAGE_CODEC=nvimgcodec).

Why a module of its own: the CPU image never installs nvImageCodec, so this is the only place that imports
it, lazily, and the rest of the pipeline sees a codec that takes bytes and gives host BGR uint8 pixels
(paste-back and everything after it run on the CPU) and takes host BGR and gives JPEG bytes.

API facts (nvidia-nvimgcodec-cu13 0.9.0.20), read from the wheel's own pybind11 docstrings
(`help(nvimgcodec.Decoder.decode)` etc. on the unpacked wheel; the import works without a GPU, only
`Decoder()`/`Encoder()` need one and raise `RuntimeError: CUDA Runtime failure: '#35'` without it) and
the docs at docs.nvidia.com/cuda/nvimagecodec (Python API, samples/nvimgcodec.html):
- `from nvidia import nvimgcodec`; `nvimgcodec.Decoder(device_id=-1, max_num_cpu_threads=0, backends=None,
  options='')`, `nvimgcodec.Encoder(...)` with the same arguments.
- `Decoder.decode(src: CodeStream, *, image=None, params: DecodeParams | None, cuda_stream=0)` returns an
  `Image` or None when it cannot decode; an overload takes a list of CodeStreams (a batch) and returns a
  list with None where an image failed. `CodeStream(bytes)` wraps encoded bytes.
- `DecodeParams(apply_exif_orientation=True, color_spec=ColorSpec.SRGB, allow_any_depth=False,
  sample_format=SampleFormat.I_AUTO_COMPONENTS)`; `SampleFormat` has `I_BGR` and `I_RGB` (interleaved HWC);
  `ColorSpec` has `SRGB` (0.9 renamed the older `RGB`).
- `Image.cpu()` copies a device image to host memory (None when the copy cannot be done); a host Image
  exposes `__array_interface__`, so `np.asarray(image)` views it.
- `nvimgcodec.as_image(array, *, sample_format=SampleFormat.I_BGR)` wraps a host HWC array (3 channels
  default to I_RGB otherwise).
- `Encoder.encode(image, "jpeg", *, params=EncodeParams(quality_type=QualityType.QUALITY,
  quality_value=92))` returns a `CodeStream` (None on failure); a CodeStream supports the buffer protocol,
  so `bytes(memoryview(stream))` gives the file. Chroma subsampling defaults to 4:2:0 for JPEG, as OpenCV's.

Why OpenCV takes the overflow: on an H100 one image is 3-12x faster on the GPU (1080p decode 1.71 against
4.59 ms, encode 0.82 against 6.88 ms), but one Decoder and one Encoder serve every request thread, and when
every image queued for them the pod served less than with OpenCV alone (1080p at concurrency 32: 110
against 162 requests/s; 4K: 63 against 81) while CPU cores sat idle (README, "JPEG on the GPU"). So an
image whose decoder (encoder) is busy with another request is decoded (encoded) by OpenCV at once, exactly
as the default codec does it (`cv2.imdecode(..., IMREAD_COLOR)`, EXIF orientation applied;
`cv2.imencode('.jpg', ..., [IMWRITE_JPEG_QUALITY, q])`): the GPU takes what it can and no request waits for
it. `CodecCounts` counts which path did each image; the function exports it as
`facefusion_image_codec_images_total{op, codec}` (function/metrics.py).

Every call to the library is made through this module; a guess that turns out wrong on a GPU machine
shows up as `GpuJpegUnavailable` (readiness refused with the library's own message) at start, because
`open_gpu_jpeg` decodes and encodes a small image once before the codec is handed out and compares both
with OpenCV. Should this version not honour I_BGR (colours swapped), the check falls back to I_RGB with
the swap done on the host (cv2.cvtColor), and the bench's header says which one runs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from .errors import ProviderUnavailable
from .images import opencv_decode, opencv_encode

IMAGE_CODECS = ("opencv", "nvimgcodec")
OPS = ("decode", "encode")


class GpuJpegUnavailable(ProviderUnavailable):
    """IMAGE_CODEC=nvimgcodec, but nvImageCodec cannot be imported or cannot work on a CUDA device here:
    readiness is refused with the reason instead of quietly decoding on the CPU."""

    code = "image-codec-unavailable"


def import_nvimgcodec() -> Any:
    """The `nvidia.nvimgcodec` module; raises GpuJpegUnavailable (with the import error) when absent."""
    try:
        from nvidia import nvimgcodec  # type: ignore[import-not-found,attr-defined]
    except Exception as exc:  # ImportError, or OSError from a shared library that does not load
        raise GpuJpegUnavailable(
            f"IMAGE_CODEC=nvimgcodec, but nvImageCodec cannot be imported ({type(exc).__name__}: {exc}); "
            "install nvidia-nvimgcodec-cu13 (the gpu-codec extra) or set IMAGE_CODEC=opencv") from exc
    return nvimgcodec


class CodecCounts:
    """Images done per (op, codec): ("decode" | "encode", "nvimgcodec" | "opencv"), for the metrics.

    Request threads add to it concurrently, so every change and every read holds a lock (a `+= 1` on a
    dict entry is a read, an add and a store, which threads can interleave). Only images the codec handed
    back are counted: a decode the GPU cannot do (None, then Pillow's path) is not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {(op, codec): 0 for op in OPS for codec in IMAGE_CODECS[::-1]}

    def add(self, op: str, codec: str) -> None:
        with self._lock:
            self._counts[(op, codec)] += 1

    def snapshot(self) -> Mapping[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


class GpuJpeg:
    """nvImageCodec's decoder and encoder on one CUDA device, giving and taking host BGR uint8.

    One Decoder and one Encoder serve all request threads; the library documents no thread safety for
    concurrent calls on one instance, so each is guarded by its own lock (decode and encode still overlap).
    With `overflow` (the server's way) an image whose lock another image holds goes to OpenCV at once
    instead of waiting; `overflow=False` queues every image for the device (the bench's baseline).
    `counts` says which path did each image.
    `bgr_decode`/`bgr_encode` say whether the device reads and writes BGR itself (SampleFormat.I_BGR); when
    `open_gpu_jpeg`'s check finds it does not, RGB is used and the channels are swapped on the host."""

    name = "nvimgcodec"

    def __init__(self, device_id: int = 0, module: Any | None = None, overflow: bool = True) -> None:
        nv = module if module is not None else import_nvimgcodec()
        self.nv = nv
        self.device_id = device_id
        self.overflow = overflow
        self.decoder = nv.Decoder(device_id=device_id)
        self.encoder = nv.Encoder(device_id=device_id)
        self._decode_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self.counts = CodecCounts()
        self.bgr_decode = True
        self.bgr_encode = True
        self.params = self.decode_params(bgr=True)

    def decode_params(self, bgr: bool) -> Any:
        nv = self.nv
        return nv.DecodeParams(apply_exif_orientation=True, color_spec=nv.ColorSpec.SRGB,
                               sample_format=nv.SampleFormat.I_BGR if bgr else nv.SampleFormat.I_RGB)

    def use_rgb_decode(self) -> None:
        self.bgr_decode, self.params = False, self.decode_params(bgr=False)

    def _to_host_bgr(self, image: Any) -> np.ndarray | None:
        if image is None:
            return None
        host = image.cpu()
        if host is None:
            return None
        pixels = np.asarray(host)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            return None
        if not self.bgr_decode:
            return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        # the array views the host Image's buffer and keeps the Image alive (its base); copied only when
        # it is padded or read-only, since later stages paste into the pixels in place
        return pixels if pixels.flags.c_contiguous and pixels.flags.writeable else pixels.copy()

    def decode(self, data: bytes) -> np.ndarray | None:
        """HxWx3 BGR uint8 on the host, EXIF orientation applied: by the GPU when its decoder is free, else
        by OpenCV at once (with `overflow`). None when the path taken cannot decode it."""
        if not self._decode_lock.acquire(blocking=not self.overflow):
            return self._counted("decode", "opencv", opencv_decode(data))
        try:
            image = self.decoder.decode(self.nv.CodeStream(data), params=self.params)
        finally:
            self._decode_lock.release()
        return self._counted("decode", "nvimgcodec", self._to_host_bgr(image))

    def _counted(self, op: str, codec: str, result: Any) -> Any:
        if result is not None:
            self.counts.add(op, codec)
        return result

    def gpu_decode(self, data: bytes) -> np.ndarray | None:
        """The device's decode alone, waiting for the decoder and not counted (the start-up check)."""
        with self._decode_lock:
            image = self.decoder.decode(self.nv.CodeStream(data), params=self.params)
        return self._to_host_bgr(image)

    def decode_batch(self, blobs: list[bytes]) -> list[np.ndarray | None]:
        """Several JPEGs in one call (the batched overload of `Decoder.decode`), always on the device (it
        waits for the decoder) and not counted: the bench's, the server never batches decodes."""
        with self._decode_lock:
            images = self.decoder.decode([self.nv.CodeStream(b) for b in blobs], params=self.params)
        return [self._to_host_bgr(image) for image in images]

    def encode(self, bgr: np.ndarray, quality: int) -> bytes:
        """JPEG bytes of host BGR pixels at `quality` (1-100, as OpenCV's IMWRITE_JPEG_QUALITY): by the GPU
        when its encoder is free, else by OpenCV at once (with `overflow`)."""
        if not self._encode_lock.acquire(blocking=not self.overflow):
            return self._counted("encode", "opencv", opencv_encode(bgr, quality))
        try:
            stream = self._device_encode(bgr, quality)
        finally:
            self._encode_lock.release()
        return self._counted("encode", "nvimgcodec", self._encoded_bytes(stream))

    def gpu_encode(self, bgr: np.ndarray, quality: int) -> bytes:
        """The device's encode alone, waiting for the encoder and not counted (the start-up check)."""
        with self._encode_lock:
            stream = self._device_encode(bgr, quality)
        return self._encoded_bytes(stream)

    def _device_encode(self, bgr: np.ndarray, quality: int) -> Any:
        """The encoder's call, with the encoder's lock held by the caller; the bytes are copied out after
        it is released (`_encoded_bytes`), so the encoder is busy only while it encodes."""
        nv = self.nv
        if self.bgr_encode:
            image = nv.as_image(np.ascontiguousarray(bgr), sample_format=nv.SampleFormat.I_BGR)
        else:
            image = nv.as_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), sample_format=nv.SampleFormat.I_RGB)
        params = nv.EncodeParams(quality_type=nv.QualityType.QUALITY, quality_value=float(quality))
        return self.encoder.encode(image, "jpeg", params=params)

    @staticmethod
    def _encoded_bytes(stream: Any) -> bytes:
        if stream is None:
            raise RuntimeError("nvImageCodec could not encode the image as JPEG")
        return bytes(memoryview(stream))


def _probe() -> np.ndarray:
    """A small BGR image with distinct channels: a red/blue swap shows in `_matches`."""
    probe = np.zeros((64, 96, 3), np.uint8)
    probe[:, :48, 2] = 200  # left half red
    probe[:, 48:, 0] = 160  # right half blue
    return probe


def _matches(got: np.ndarray | None, want: np.ndarray) -> bool:
    return got is not None and got.shape == want.shape and float(np.abs(
        got.astype(np.int16) - want.astype(np.int16)).mean()) < 6.0


def _check(codec: GpuJpeg) -> str:
    """Decode an OpenCV JPEG and encode for OpenCV, BGR first, else RGB swapped on the host; returns
    what failed ("" when both work)."""
    probe = _probe()
    jpeg = cv2.imencode(".jpg", probe, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    reference = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    problems = []
    decoded = _attempt(lambda: codec.gpu_decode(jpeg))
    if not _matches(decoded, reference):
        codec.use_rgb_decode()
        decoded_rgb = _attempt(lambda: codec.gpu_decode(jpeg))
        if not _matches(decoded_rgb, reference):
            problems.append(f"decode gave {_summary(decoded)} with I_BGR and {_summary(decoded_rgb)} with I_RGB")

    def encoded() -> np.ndarray | None:
        return cv2.imdecode(np.frombuffer(codec.gpu_encode(probe, 92), np.uint8), cv2.IMREAD_COLOR)
    back = _attempt(encoded)
    if not _matches(back, reference):
        codec.bgr_encode = False
        back_rgb = _attempt(encoded)
        if not _matches(back_rgb, reference):
            problems.append(f"encode gave {_summary(back)} with I_BGR and {_summary(back_rgb)} with I_RGB")
    return "; ".join(problems)


def _attempt(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # kept for the message: the caller reports both tries
        return exc


def _summary(result: Any) -> str:
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    if result is None:
        return "None"
    if not isinstance(result, np.ndarray):
        return repr(result)[:80]
    return f"{result.shape} pixels, left {result[32, 10].tolist()} right {result[32, 80].tolist()}"


def open_gpu_jpeg(device_id: int = 0, module: Any | None = None) -> GpuJpeg:
    """A working GpuJpeg, or GpuJpegUnavailable naming what failed (no CUDA device, a library that does
    not load, an API that differs): a small image is decoded and encoded once and checked against OpenCV."""
    try:
        codec = GpuJpeg(device_id, module)
    except GpuJpegUnavailable:
        raise
    except Exception as exc:
        raise GpuJpegUnavailable(f"IMAGE_CODEC=nvimgcodec, but nvImageCodec cannot work on CUDA device "
                                 f"{device_id} ({type(exc).__name__}: {exc})") from exc
    problems = _check(codec)
    if problems:
        raise GpuJpegUnavailable(f"IMAGE_CODEC=nvimgcodec, but nvImageCodec's check on CUDA device {device_id} "
                                 f"failed: {problems}")
    return codec
