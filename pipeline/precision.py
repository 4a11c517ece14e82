"""fp16 graphs for GPUs with tensor cores, kept only when their outputs stay close to fp32's.

On an H100/H200 the convolutions and matrix products of the swapper run on tensor cores in half
precision at several times the fp32 rate, and half the weights move through memory. The conversion is
the runtime's own (`onnxruntime.transformers.float16`, which ships in the CPU and GPU wheels alike and
is the converter of onnxconverter-common, so it adds no dependency). `keep_io_types` keeps the inputs
and outputs float32: the kinds' pre- and post-processing do not change, the graph casts at its edges,
and ops the converter knows to be unsafe in half precision (its default block list) stay float32.

A converted graph is served only if, on a fixed probe input, its outputs stay within `FP16_TOLERANCE`
of the fp32 graph's, as a fraction of each output's range: 1% is 2.5 grey levels of a swapped face
(output 0..1) and leaves an embedding's cosine similarity to fp32's above 0.999.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .batch_axis import probe_feeds
from .gpu_info import gpu_compute_capability

if TYPE_CHECKING:
    import onnx

FP16_TOLERANCE = 0.01


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with float16 weights and compute, float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def fp16_error(fp32: ort.InferenceSession, fp16: ort.InferenceSession) -> float:
    """The largest error of any fp16 output on the probe input, as a fraction of the fp32 output's range."""
    feeds = probe_feeds(fp32.get_inputs(), 1, seed=1)
    want, got = fp32.run(None, feeds), fp16.run(None, feeds)
    worst = 0.0
    for a, b in zip(want, got, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            return float("inf")
        spread = max(float(a.max() - a.min()) if a.size else 0.0, 1e-6)
        worst = max(worst, float(np.max(np.abs(a - b))) / spread if a.size else 0.0)
    return worst


def tensor_cores(compute_capability: str) -> bool:
    """NVIDIA GPUs of compute capability 7.0 (Volta) and later have tensor cores."""
    try:
        return float(compute_capability) >= 7.0
    except ValueError:
        return False


def fp16_wanted(mode: str, providers: Sequence[str], device_id: int = 0,
                capability: Callable[[int], str] = gpu_compute_capability) -> bool:
    """MODEL_FP16: `on` and `off` as said; `auto` converts for the CUDA provider on a GPU with tensor cores.

    TensorRT first in the list builds its own fp16 engines (TRT_FP16), and on the CPU half precision has
    few kernels and no speed to gain, so `auto` is off for both.
    """
    if mode in ("on", "off"):
        return mode == "on"
    return bool(providers) and providers[0] == "CUDAExecutionProvider" and tensor_cores(capability(device_id))
