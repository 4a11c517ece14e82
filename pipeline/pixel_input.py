"""The pixel normalisation moved into the graph: a prepared graph that takes the uint8 BGR image itself.

Why: on a GPU pod the CPU, not the GPU, limits requests per second (GPU utilisation 8-18% on an H100).
Before every detection the CPU turned the 640x640 letterboxed canvas into a float32 NCHW blob
(`cv2.dnn.blobFromImage`: mean, scale, BGR->RGB): 1-1.5 ms of CPU per request on the H100's host and up to
6 ms on a loaded 2-CPU box, and the runtime then copied 4.9 MB to the GPU instead of the canvas's 1.2 MB.
`with_pixel_input` prepends that arithmetic to the graph, where the execution provider does it (on the
GPU, after copying the uint8 canvas):

    bgr_uint8 [batch, H, W, 3] -> Transpose to NCHW -> Gather channels 2,1,0 (when the model takes RGB)
        -> Cast to float32 -> Sub mean -> Mul 1/std -> the graph's original float input

Transposing first keeps the channel reorder a copy of three contiguous planes: a Gather on the last
axis of the NHWC image took 11 ms in one thread of this CPU, the planes 0.9 ms (blobFromImage 1.0 ms). The arithmetic
is OpenCV's (subtract the mean in the model's channel order, multiply by 1/std in float32), so the
outputs are the float graph's: on the CPU the real SCRFD's differ by 0.0.

A kind declares its normalisation as a `PixelFormat` (`ModelKind.pixel_format`); the graph preparation
(pipeline/artefacts.py) applies the rewrite last, after the batch axis and fp16 decisions, and keeps it
only when `pixels_match` proves it on random images. A kind whose session takes uint8 feeds the canvas,
otherwise `PixelFormat.blob` (original graphs, OPTIMISED_GRAPHS=0, a refused rewrite).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .batch_axis import relative_error

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

PIXEL_INPUT = "bgr_uint8"
UINT8 = "tensor(uint8)"
# The rewritten graph does the float graph's arithmetic on the same values: 0.0 apart on the CPU (the real
# SCRFD, with its normalisation and with ImageNet's per-channel mean and std). The margin is for GPUs,
# where the CUDA provider convolves in TF32 and a last-bit difference of one input value can round
# another way. A wrong rewrite is far outside it: on SCRFD, a missing BGR->RGB swap moved the outputs by
# 66% of their scale, a mean off by half a level by 0.5%, std 127.5 in place of 128 by 1%.
PIXEL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PixelFormat:
    """How a kind turns an OpenCV image (uint8, BGR, HWC) into its float32 NCHW input.

    `mean` is in the model's channel order (OpenCV's convention with swapRB), `std` divides every
    channel, `rgb`: the model takes RGB, so OpenCV's BGR is reordered.
    """

    mean: tuple[float, float, float]
    std: float
    rgb: bool = True

    def blob(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """The float32 NCHW blob of same-size BGR uint8 images, as a float-input graph takes it."""
        images = list(images)
        height, width = images[0].shape[:2]
        return cv2.dnn.blobFromImages(images, 1.0 / self.std, (width, height), self.mean, swapRB=self.rgb)

    def feed(self, images: np.ndarray, pixels: bool) -> np.ndarray:
        """What a session takes for `images` (N x H x W x 3 uint8): the images themselves when it takes
        pixels (`takes_pixels`), else their blob."""
        return images if pixels else self.blob(images)


def takes_pixels(session: ort.InferenceSession) -> bool:
    """True when the session's first input is uint8: a graph prepared by `with_pixel_input`."""
    inputs = session.get_inputs()
    return bool(inputs) and inputs[0].type == UINT8


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def with_pixel_input(model: onnx.ModelProto, fmt: PixelFormat) -> tuple[onnx.ModelProto | None, str]:
    """A copy of `model` that takes `PIXEL_INPUT` (uint8 [batch, H, W, 3] BGR) in place of its float
    NCHW image input, and why not (None) when its input is not one 3-channel float NCHW image.

    The batch, height and width dimensions are the original input's, fixed or named (a graph with a
    free batch axis keeps it). Not yet proven: check the result with `pixels_match` before serving it.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        return None, f"the graph has {len(inputs)} inputs, not one image"
    image = inputs[0]
    dims = _dims(image)
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return None, f"input {image.name} is {onnx.TensorProto.DataType.Name(image.type.tensor_type.elem_type)}, not FLOAT"
    if len(dims) != 4 or dims[1] != 3:
        return None, f"input {image.name} is {dims}, not a 3-channel NCHW image"
    if PIXEL_INPUT in initializer_names or any(PIXEL_INPUT in n.output for n in graph.node):
        return None, f"the graph already has a tensor named {PIXEL_INPUT}"

    model = copy.deepcopy(model)
    graph = model.graph
    original = next(i for i in graph.input if i.name == image.name)
    source = original.type.tensor_type.shape.dim
    pixels = helper.make_tensor_value_info(PIXEL_INPUT, onnx.TensorProto.UINT8, [None] * 4)
    for target, dim in zip(pixels.type.tensor_type.shape.dim, (source[0], source[2], source[3], None), strict=True):
        if dim is None:
            target.dim_value = 3
        else:
            target.CopyFrom(dim)
    graph.input.remove(original)
    graph.input.insert(0, pixels)

    prefix = "pixel_input/"
    mean = np.asarray(fmt.mean, np.float32).reshape(1, 3, 1, 1)
    scale = np.full((1, 3, 1, 1), 1.0 / fmt.std, np.float32)
    graph.initializer.extend([numpy_helper.from_array(mean, prefix + "mean"),
                              numpy_helper.from_array(scale, prefix + "scale")])
    nodes = [helper.make_node("Transpose", [PIXEL_INPUT], [prefix + "nchw"], name=prefix + "transpose", perm=[0, 3, 1, 2])]
    planes = prefix + "nchw"
    if fmt.rgb:
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), prefix + "rgb_order"))
        nodes.append(helper.make_node("Gather", [planes, prefix + "rgb_order"], [prefix + "rgb"], name=prefix + "rgb", axis=1))
        planes = prefix + "rgb"
    nodes += [
        helper.make_node("Cast", [planes], [prefix + "float"], name=prefix + "cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Sub", [prefix + "float", prefix + "mean"], [prefix + "centred"], name=prefix + "sub_mean"),
        helper.make_node("Mul", [prefix + "centred", prefix + "scale"], [image.name], name=prefix + "scale"),
    ]
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    return model, ""


def probe_images(arg: ort.NodeArg, size: tuple[int, int], count: int = 2, seed: int = 0) -> np.ndarray:
    """Random uint8 images for the pixel input `arg`: its fixed batch or `count`, its fixed height and
    width or `size` (width, height)."""
    batch, height, width = arg.shape[0], arg.shape[1], arg.shape[2]
    shape = (batch if isinstance(batch, int) else count,
             height if isinstance(height, int) else size[1],
             width if isinstance(width, int) else size[0], 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def pixels_match(floats: ort.InferenceSession, pixels: ort.InferenceSession, fmt: PixelFormat,
                 size: tuple[int, int], tolerance: float = PIXEL_TOLERANCE) -> tuple[bool, str, float]:
    """Random images through `pixels` and, as `fmt.blob`, through the float graph `floats`: (agree, why
    not, the largest error as a fraction of an output's scale). Two images where the batch is free, so
    the probe also runs the batch axis."""
    images = probe_images(pixels.get_inputs()[0], size)
    try:
        want = floats.run(None, {floats.get_inputs()[0].name: fmt.blob(images)})
        got = pixels.run(None, {pixels.get_inputs()[0].name: images})
    except Exception as exc:  # the runtime's own types: a graph that cannot run is a refusal
        return False, f"the uint8 graph fails to run ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", float("inf")
    worst, worst_name = 0.0, ""
    for out, a, b in zip(floats.get_outputs(), got, want, strict=True):
        error = relative_error(a, b)
        if error > worst:
            worst, worst_name = error, out.name
    if worst > tolerance:
        return False, (f"output {worst_name} of the uint8 graph differs from the float graph on the same images "
                       f"(relative error {worst:.3g}, limit {tolerance})"), worst
    return True, "", worst
