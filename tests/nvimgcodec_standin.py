"""A stand-in for NVIDIA nvImageCodec's Python API (`from nvidia import nvimgcodec`), on top of OpenCV.

nvImageCodec needs a CUDA device and is never installed on the CPU machines the tests run on, so the
tests give this module to `GpuJpeg(module=...)` / `open_gpu_jpeg(module=...)`, or put it on a served
function's path as `nvidia.nvimgcodec` (see `install_as_nvidia_nvimgcodec`). It implements exactly the
calls pipeline/gpu_jpeg.py makes, with the signatures its docstring lists (read there from the 0.9.0.20
wheel's pybind11 docstrings and docs.nvidia.com/cuda/nvimagecodec): keyword-only `params`, a device
`Image` that only `cpu()` brings to the host, a host `Image` with `__array_interface__`, `as_image` with
`sample_format`, EXIF orientation applied unless `apply_exif_orientation=False`, None from a decode or
encode that fails. Anything else (a positional `params`, a format other than "jpeg", a device image given
to numpy) raises, so a wrong call in gpu_jpeg.py fails here as it would on the GPU.

`Gate` lets a test hold a Decoder or Encoder busy: set `decoder.gate = Gate()`, and the next decode on it
sets `gate.entered` and waits for `gate.release` before it decodes.
"""

from __future__ import annotations

import enum
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["CodeStream", "ColorSpec", "DecodeParams", "Decoder", "EncodeParams", "Encoder", "Gate", "Image",
           "QualityType", "SampleFormat", "as_image"]

__version__ = "0.9.0-standin"


class SampleFormat(enum.Enum):
    I_AUTO_COMPONENTS = "auto"
    I_BGR = "bgr"
    I_RGB = "rgb"


class ColorSpec(enum.Enum):
    SRGB = "srgb"


class QualityType(enum.Enum):
    DEFAULT = "default"
    QUALITY = "quality"


class Gate:
    """Holds a Decoder's or Encoder's next call: `entered` is set when the call arrives, and the call goes
    on only once `release` is set. (A test's hook: the real library has no such thing.)"""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def pass_through(self) -> None:
        self.entered.set()
        if not self.release.wait(60):  # a test that forgot to release: fail the call rather than hang
            raise RuntimeError("stand-in gate never released")


class CodeStream(bytes):
    """Encoded bytes. The real CodeStream exposes the buffer protocol (`memoryview(stream)`); a Python 3.11
    class cannot define `__buffer__`, so this one gets it from bytes."""


class Image:
    """A decoded image: on the device (`cpu()` copies it to the host) or on the host
    (`__array_interface__`, as the real host Image; a device Image has none, so numpy refuses it)."""

    def __init__(self, pixels: np.ndarray, sample_format: SampleFormat, on_device: bool) -> None:
        self._pixels = pixels
        self.sample_format = sample_format
        self._on_device = on_device

    @property
    def __array_interface__(self) -> dict[str, Any]:
        if self._on_device:
            raise AttributeError("a device Image has no __array_interface__; call cpu() first")
        return self._pixels.__array_interface__

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._pixels.shape)

    def cpu(self) -> Image:
        return Image(self._pixels.copy(), self.sample_format, on_device=False) if self._on_device else self


class DecodeParams:
    def __init__(self, apply_exif_orientation: bool = True, color_spec: ColorSpec = ColorSpec.SRGB,
                 allow_any_depth: bool = False,
                 sample_format: SampleFormat = SampleFormat.I_AUTO_COMPONENTS) -> None:
        if not isinstance(color_spec, ColorSpec) or not isinstance(sample_format, SampleFormat):
            raise TypeError("DecodeParams(): incompatible function arguments")
        self.apply_exif_orientation = apply_exif_orientation
        self.color_spec = color_spec
        self.allow_any_depth = allow_any_depth
        self.sample_format = sample_format


class EncodeParams:
    def __init__(self, quality_type: QualityType = QualityType.DEFAULT, quality_value: float = 95.0) -> None:
        if not isinstance(quality_type, QualityType) or not isinstance(quality_value, float):
            raise TypeError("EncodeParams(): incompatible function arguments")
        self.quality_type = quality_type
        self.quality_value = quality_value


def as_image(array: np.ndarray, *, sample_format: SampleFormat = SampleFormat.I_AUTO_COMPONENTS) -> Image:
    """Wraps a host HWC uint8 array (3 channels default to I_RGB, as the real one)."""
    array = np.asarray(array)
    if array.ndim != 3 or array.dtype != np.uint8 or not array.flags.c_contiguous:
        raise ValueError("as_image(): expected a contiguous HWC uint8 array")
    if sample_format is SampleFormat.I_AUTO_COMPONENTS:
        sample_format = SampleFormat.I_RGB
    return Image(array, sample_format, on_device=False)


class Decoder:
    def __init__(self, device_id: int = -1, max_num_cpu_threads: int = 0, backends: Any = None,
                 options: str = "") -> None:
        self.device_id = device_id
        self.gate: Gate | None = None
        self.calls = 0

    def decode(self, src: CodeStream | list[CodeStream], *, image: Any = None, params: DecodeParams | None = None,
               cuda_stream: int = 0) -> Image | None | list[Image | None]:
        if isinstance(src, list):
            return [self._one(s, params) for s in src]
        return self._one(src, params)

    def _one(self, src: CodeStream, params: DecodeParams | None) -> Image | None:
        if not isinstance(src, CodeStream):
            raise TypeError("decode(): incompatible function arguments (src must be a CodeStream)")
        params = params or DecodeParams()
        self.calls += 1
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.pass_through()
        flags = cv2.IMREAD_COLOR if params.apply_exif_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        bgr = cv2.imdecode(np.frombuffer(src, np.uint8), flags)
        if bgr is None:
            return None
        fmt = params.sample_format
        if fmt is SampleFormat.I_BGR:
            return Image(bgr, fmt, on_device=True)
        return Image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), SampleFormat.I_RGB, on_device=True)


class Encoder:
    def __init__(self, device_id: int = -1, max_num_cpu_threads: int = 0, backends: Any = None,
                 options: str = "") -> None:
        self.device_id = device_id
        self.gate: Gate | None = None
        self.calls = 0

    def encode(self, image: Image, codec: str, *, params: EncodeParams | None = None,
               cuda_stream: int = 0) -> CodeStream | None:
        if not isinstance(image, Image) or codec != "jpeg":
            raise TypeError("encode(): incompatible function arguments")
        params = params or EncodeParams()
        self.calls += 1
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.pass_through()
        pixels = np.asarray(image.cpu())
        if image.sample_format is SampleFormat.I_RGB:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        quality = int(round(params.quality_value)) if params.quality_type is QualityType.QUALITY else 95
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return CodeStream(buf.tobytes()) if ok else None


def install_as_nvidia_nvimgcodec(folder: Path) -> Path:
    """A folder that, on PYTHONPATH, makes `from nvidia import nvimgcodec` give this stand-in (for a function
    served in another process); the served process must be able to import `tests` (the repository root)."""
    package = folder / "nvidia" / "nvimgcodec"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        '"""nvImageCodec stand-in for tests (tests/nvimgcodec_standin.py)."""\n'
        "from tests.nvimgcodec_standin import *  # noqa: F403\n"
        "from tests.nvimgcodec_standin import __version__  # noqa: F401\n")
    return folder
