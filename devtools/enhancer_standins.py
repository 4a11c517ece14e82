"""Stand-ins for the enhancer kinds, with the real files' input and output signatures (a development tool).

Signatures, from FaceFusion's face_enhancer (facefusion/processors/modules/face_enhancer/core.py), whose
`forward` feeds inputs by name:

| kind | inputs | output |
|---|---|---|
| `gfpgan` (1.2, 1.3, 1.4), `restoreformer++` | `input` float32 1x3x512x512, RGB in [-1, 1] | float32 1x3x512x512 in [-1, 1] |
| `gpen` (256, 512, 1024, 2048) | `input` float32 1x3xNxN | float32 1x3xNxN |
| `codeformer` | `input` float32 1x3x512x512, `weight` float64 (1,) in 0..1 | float32 1x3x512x512 |

FaceFusion reads the first output whatever its name; the stand-ins call it `output`.

Two behaviours: `identity` returns its input (so a test sees exactly what pre- and post-processing
do to a crop), and the default mild sharpening, clipped to [-1, 1] as the real models' range is. The
CodeFormer stand-in blends the sharpened face with its input by `weight`, as fidelity does: weight 1
gives the input back, weight 0 the sharpened face, so a test sees that the weight reaches the graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
ENHANCER_KINDS = ("gfpgan", "codeformer", "gpen", "restoreformer++")
# The extra enhancer roles `make-test-models` writes besides `enhancer` (gfpgan): role -> (kind, size).
# gpen at 256 exercises the other template (arcface_128) and a size read from the file.
EXTRA_ENHANCER_ROLES: dict[str, tuple[str, int]] = {"codeformer": ("codeformer", 512), "gpen": ("gpen", 256),
                                                    "restoreformer": ("restoreformer++", 512)}


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facefusion-fn-standin")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _sharpen(x: str, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes: `out` = clip(depthwise 3x3 sharpening of `x`, -1, 1)."""
    kernel = np.array([[0, -0.25, 0], [-0.25, 2.0, -0.25], [0, -0.25, 0]], dtype=np.float32)
    weights = np.stack([kernel[None]] * 3).astype(np.float32)  # 3x1x3x3
    nodes = [helper.make_node("Conv", [x, "sharpen_w"], ["sharp"], name="sharpen", group=3, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["sharp", "lo", "hi"], [out], name="clip")]
    inits = [numpy_helper.from_array(weights, "sharpen_w"), numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(1.0, np.float32), "hi")]
    return nodes, inits


def enhancer_standin(kind: str, size: int = 512, identity: bool = False) -> onnx.ModelProto:
    """A stand-in of `kind` at `size` (gpen: 256, 512, 1024 or 2048; the others 512)."""
    if kind not in ENHANCER_KINDS:
        raise ValueError(f"no enhancer stand-in for kind {kind!r} (kinds: {', '.join(ENHANCER_KINDS)})")
    image = [1, 3, size, size]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, image)]
    if kind == "codeformer":
        inputs.append(helper.make_tensor_value_info("weight", TensorProto.DOUBLE, [1]))
        nodes, inits = _sharpen("input", "restored")
        if identity:
            nodes = [helper.make_node("Identity", ["input"], ["restored"], name="identity")]
            inits = []
        nodes += [  # output = restored * (1 - w) + input * w
            helper.make_node("Cast", ["weight"], ["w"], name="weight_float", to=TensorProto.FLOAT),
            helper.make_node("Sub", ["input", "restored"], ["kept"], name="kept"),
            helper.make_node("Mul", ["kept", "w"], ["kept_w"], name="fidelity"),
            helper.make_node("Add", ["restored", "kept_w"], ["output"], name="blend"),
        ]
    elif identity:
        nodes, inits = [helper.make_node("Identity", ["input"], ["output"], name="identity")], []
    else:
        nodes, inits = _sharpen("input", "output")
    graph = helper.make_graph(nodes, f"{kind}_standin", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, image)], initializer=inits)
    return _model(graph)


def write_enhancer_standins(target: Path, roles: dict[str, tuple[str, int]] | None = None) -> dict[str, dict[str, Any]]:
    """Write one stand-in per extra enhancer role into `target`; their manifest entries, by role
    (`sha256` and `size` are added by the caller with the other entries)."""
    entries: dict[str, dict[str, Any]] = {}
    for role, (kind, size) in (roles or EXTRA_ENHANCER_ROLES).items():
        name = f"enhance-{role}.onnx"
        onnx.save(enhancer_standin(kind, size), str(target / name))
        entries[role] = {"file": name, "kind": f"{kind}-standin", "input_size": [size, size]}
    return entries
