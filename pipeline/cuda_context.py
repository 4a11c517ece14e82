"""The GPU's primary context, made as a serving process starts, beside its imports.

Why: the first CUDA session a process creates (pipeline/loader.py) initialises the driver and creates
the device's primary context before it can load a kernel: driver work that needs nothing from Python,
yet it waited for the imports that come first (numpy, OpenCV, ONNX Runtime and the pipeline: 0.4-0.7 s
on the H200's host before loading began). `start_early` runs it in a thread as the first thing a
serving process does (function/serve.py): the driver's calls go through ctypes, which lets go of the GIL
for each call, so the imports go on meanwhile. The CUDA runtime inside ONNX Runtime then finds the
device's primary context made and takes a reference of its own; this one is never given back, as the
sessions keep theirs for the life of the process.

It decides nothing: a driver that is missing or fails leaves its reason in the log, and creating the
sessions reports the real error as before (strict providers, pipeline/sessions.py). Only a process
that will run CUDA does it: EXECUTION_PROVIDERS names `cuda` or `tensorrt`, or is `auto` where the
installed ONNX Runtime has its CUDA provider, or IMAGE_CODEC is `nvimgcodec`; the WORKERS supervisor never does (it serves nothing), nor
a process with CUDA_EARLY_CONTEXT=off (the sessions then make the context, as before: the baseline of
`python -m bench.startup_ab --against CUDA_EARLY_CONTEXT=off`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, Settings, provider_words

log = logging.getLogger(__name__)
DRIVER_LIBRARY = "libcuda.so.1"  # the NVIDIA driver's own library, which the device plugin mounts
GPU_PROVIDERS = frozenset({"cuda", "tensorrt"})


@dataclass
class EarlyContext:
    """A primary context being made on one device: when it started, and how it ended."""

    device_id: int
    started: float = field(default_factory=time.time)
    done: threading.Event = field(default_factory=threading.Event)
    ready: float | None = None  # when it succeeded (a Unix time)
    error: str | None = None  # why there is none, once it failed

    @property
    def seconds(self) -> float | None:
        """How long the driver took, once it succeeded."""
        return None if self.ready is None else self.ready - self.started


_EARLY: list[EarlyContext] = []


def gpu_runtime_installed() -> bool:
    """The installed ONNX Runtime is a CUDA build (onnxruntime-gpu): its CUDA provider library is there.
    Found without importing it, which is what `start_early` must not wait for."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(p) / "capi" / "libonnxruntime_providers_cuda.so").is_file() for p in spec.submodule_search_locations)


def runs_cuda(spec: str) -> bool:
    """EXECUTION_PROVIDERS `spec` will put sessions on a GPU, as far as can be told before importing the runtime."""
    words = set(provider_words(spec))
    if words & GPU_PROVIDERS:
        return True
    return words == {"auto"} and gpu_runtime_installed()


def _driver(library: str) -> ctypes.CDLL:
    """The driver library with the signatures of the calls made here (CUresult is a 32-bit int, CUdevice an
    int, CUcontext a pointer); a driver without one of the three calls raises AttributeError."""
    driver = ctypes.CDLL(library)
    for call, args in (("cuInit", [ctypes.c_uint]),
                       ("cuDeviceGet", [ctypes.POINTER(ctypes.c_int), ctypes.c_int]),
                       ("cuDevicePrimaryCtxRetain", [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int])):
        function = getattr(driver, call)
        function.argtypes, function.restype = args, ctypes.c_int
    return driver


def _check(driver: ctypes.CDLL, status: int, call: str) -> None:
    if status == 0:
        return
    name = ctypes.c_char_p()
    error_name = getattr(driver, "cuGetErrorName", None)  # since CUDA 6.0; the number alone without it
    known = error_name is not None and error_name(status, ctypes.byref(name)) == 0 and name.value
    raise RuntimeError(f"{call} failed: {name.value.decode() if known else 'CUDA error'} ({status})")


def _retain(early: EarlyContext, library: str) -> None:
    try:
        driver = _driver(library)
        _check(driver, driver.cuInit(0), "cuInit")
        device = ctypes.c_int()
        _check(driver, driver.cuDeviceGet(ctypes.byref(device), early.device_id), f"cuDeviceGet({early.device_id})")
        context = ctypes.c_void_p()
        _check(driver, driver.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
        early.ready = time.time()
        log.info("CUDA context of device %d made in %.3f s, beside the imports", early.device_id, early.seconds)
    except (OSError, AttributeError, RuntimeError) as exc:  # no driver, an old one, or a failing device
        early.error = f"{type(exc).__name__}: {exc}" if isinstance(exc, AttributeError) else str(exc)
        log.warning("the CUDA context was not made early (the sessions will make it, or say why not): %s", early.error)
    finally:
        early.done.set()


def start(device_id: int, library: str = DRIVER_LIBRARY) -> EarlyContext:
    """Start making `device_id`'s primary context in a daemon thread; the result is also `early()`'s."""
    made = EarlyContext(device_id)
    _EARLY.append(made)
    threading.Thread(target=_retain, args=(made, library), name="cuda-context", daemon=True).start()
    return made


def start_early(env: Mapping[str, str] | None = None) -> EarlyContext | None:
    """As a serving process starts: begin its GPU's context when its settings will run CUDA; else None.
    Bad settings start nothing here: the warm-up reports them."""
    try:
        settings = Settings.from_env(env)
    except ConfigError:
        return None
    gpu_work = runs_cuda(settings.execution_providers) or settings.image_codec == "nvimgcodec"  # JPEG on the GPU too
    if not settings.gpu.early_context or not gpu_work:
        return None
    return start(settings.gpu.device_id)


def early() -> EarlyContext | None:
    """The context this process began early, if it did."""
    return _EARLY[-1] if _EARLY else None
