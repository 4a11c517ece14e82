"""A free batch axis for graphs exported with a fixed batch of 1, kept only when a probe proves it right.

The published models (inswapper_128, SCRFD, ArcFace, GFPGAN) declare batch 1 on every input and output,
so one run serves one face or one frame. Most of their ops do not care about the batch size; what pins it
is the declared shapes and Reshape targets written as constants with a leading 1 (SCRFD's `[1, -1, 4]`,
the swapper's style vectors `[1, C, 1, 1]`). `free_batch_axis` renames the first dimension of every
input and output to `batch`, turns a leading 1 of a constant Reshape target into 0 ("copy the input's
first dimension", ONNX Reshape without `allowzero`) and drops the intermediate shape annotations that
still say 1. Whether that is right depends on the graph (a Reshape whose input's first dimension is not
the batch would now be wrong), so `batch_matches` runs the rewritten graph on a batch of 2 different
probe inputs and compares each row with a single run of the original; the loader keeps the rewrite only
when they agree within `BATCH_TOLERANCE`, and logs why not otherwise.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

BATCH_DIM = "batch"
# Rows of a batched run may differ from single runs by the kernels' blocking (another summation order):
# up to ~1e-6 relative on the CPU. On a GPU the CUDA provider convolves in TF32 by default and cuDNN
# picks another algorithm per batch size, so rows round differently; 1e-4 refused every graph on an H100
# (micro-batching never ran there). A wrong rewrite mixes the rows of independent random probes or fails
# outright: errors of the order of the outputs themselves, far above 1%.
BATCH_TOLERANCE = 1e-2


def has_free_batch(session_or_inputs) -> bool:
    """True when the first dimension of the first input is not a fixed number (a named or free axis)."""
    inputs = session_or_inputs.get_inputs() if hasattr(session_or_inputs, "get_inputs") else session_or_inputs
    shape = inputs[0].shape if inputs else None
    return bool(shape) and not isinstance(shape[0], int)


def _fixed_batch_of_one(value: onnx.ValueInfoProto) -> bool:
    dims = value.type.tensor_type.shape.dim
    return len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def _reshape_targets(graph: onnx.GraphProto) -> set[str]:
    return {node.input[1] for node in graph.node
            if node.op_type == "Reshape" and len(node.input) > 1
            and not any(a.name == "allowzero" and a.i == 1 for a in node.attribute)}


def free_batch_axis(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of `model` with a symbolic batch axis, or None when it has no fixed batch of 1 to free.

    Not yet proven: check the result with `batch_matches` before serving it.
    """
    from onnx import numpy_helper  # onnx only where graphs are prepared: a prepared start never imports it

    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if not inputs or not all(_fixed_batch_of_one(v) for v in [*inputs, *graph.output]):
        return None
    model = copy.deepcopy(model)
    graph = model.graph
    for value in [*graph.input, *graph.output]:
        if value.name in initializer_names:
            continue
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = BATCH_DIM
    targets = _reshape_targets(graph)
    for index, tensor in enumerate(graph.initializer):
        if tensor.name in targets:
            shape = numpy_helper.to_array(tensor)
            if shape.ndim == 1 and shape.size > 1 and shape[0] == 1:
                graph.initializer[index].CopyFrom(numpy_helper.from_array(np.concatenate([[0], shape[1:]]).astype(shape.dtype),
                                                                          tensor.name))
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in targets:
            for attr in node.attribute:
                if attr.name == "value":
                    shape = numpy_helper.to_array(attr.t)
                    if shape.ndim == 1 and shape.size > 1 and shape[0] == 1:
                        attr.t.CopyFrom(numpy_helper.from_array(np.concatenate([[0], shape[1:]]).astype(shape.dtype)))
    _resize_sizes_to_scales(model)
    del graph.value_info[:]  # intermediate shapes recorded with batch 1; the runtime infers them again
    return model


def _resize_sizes_to_scales(model: onnx.ModelProto) -> None:
    """Resize nodes given constant output `sizes` (SCRFD's FPN: `[1, C, H, W]`) get the same `scales`.

    A constant size keeps the batch at 1, and the following Add then broadcasts the first row's features
    onto every row: a silent mix-up the probe catches (relative error 0.27 on SCRFD). Scales of
    sizes / input shape give the same output size and coordinates for the input shape it was exported with.
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    resizes = [n for n in graph.node if n.op_type == "Resize" and len(n.input) == 4 and n.input[3] in inits]
    if not resizes:
        return
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input]}
    for node in resizes:
        sizes = numpy_helper.to_array(inits[node.input[3]])
        shape = shapes.get(node.input[0])
        if not shape or len(shape) != len(sizes) or 0 in shape or sizes[0] != shape[0]:
            continue
        name = f"{node.name or node.output[0]}_scales_for_batch"
        graph.initializer.append(numpy_helper.from_array((sizes / np.array(shape)).astype(np.float32), name))
        node.input[2], node.input[3] = name, ""
        del node.input[3]


def probe_feeds(inputs: Sequence[ort.NodeArg], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs: floats in [-1, 1] (every float input here is a normalised image or a unit
    vector), uint8 images in 0..255 (a graph that takes the image's pixels, pipeline/pixel_input.py)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in inputs:
        shape = [batch] + [d if isinstance(d, int) else 1 for d in arg.shape[1:]]
        if arg.type == "tensor(uint8)":
            feeds[arg.name] = rng.integers(0, 256, shape, dtype=np.uint8)
            continue
        dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(arg.type, np.float32)
        feeds[arg.name] = rng.uniform(-1.0, 1.0, shape).astype(dtype)
    return feeds


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference as a fraction of `want`'s largest magnitude (inf: other shape, not finite)."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return float("inf")
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-6)
    return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


def batch_matches(original: ort.InferenceSession, batched: ort.InferenceSession) -> tuple[bool, str]:
    """Run a batch of 2 probes on `batched` and each probe alone on `original`: (agree, why not)."""
    feeds = probe_feeds(original.get_inputs(), 2)
    try:
        together = batched.run(None, feeds)
        alone = [original.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(2)]
    except Exception as exc:  # the runtime's own types: a shape it cannot compute is a refusal
        return False, f"a batch of 2 fails to run ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    for index, out in enumerate(original.get_outputs()):
        want = np.concatenate([alone[0][index], alone[1][index]])
        error = relative_error(together[index], want)
        if error > BATCH_TOLERANCE:
            return False, f"output {out.name} of a batch of 2 differs from two single runs (relative error {error:.2g})"
    return True, ""
