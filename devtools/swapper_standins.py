"""Stand-ins for the swapper family and its embedding converter (a development tool, not shipped).

Each stand-in has the real file's input and output names, shapes, dtypes and value ranges, which are
read from the kind classes (pipeline/models/<kind>.py, where each fact's source is named): the target
crop at the kind's size in the kind's normalisation, the source as a 1 x 512 embedding or, for
blendswap and uniface, a 1 x 3 x s x s RGB crop in 0..1; the output in the kind's output range (0..1,
or -1..1 for the kinds whose output is denormalised); hyperswap's second output `mask`. Input order
follows the real exports where known (hyperswap: source, target) and insightface's otherwise (target,
source): the loading code binds them by name, as FaceFusion does.

Two behaviours: `tint` inverts the target and tints it by the source's direction (a swap that is easy
to see and depends on the source, whatever the scale of its embedding), `identity` gives back exactly the target crop it was given (through the kind's
own normalisation and denormalisation), for tests and fidelity benches. `batch`: a free batch axis `N`
instead of the published fixed 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.models import KINDS, FaceSwapper

SWAPPER_KINDS = ("hyperswap", "simswap", "simswap_unofficial", "ghost", "blendswap", "uniface")
CONVERTER_KIND = "crossface"
_OPSET, _IR = 17, 8


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="facefusion-fn-standin")
    model.ir_version = _IR
    onnx.checker.check_model(model)
    return model


def _const(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def swapper_model(kind: str, behaviour: str = "tint", batch: bool = False, seed: int = 7) -> onnx.ModelProto:
    """A stand-in for swapper `kind`, one of SWAPPER_KINDS (inswapper's are in devtools/standins.py)."""
    cls = KINDS[kind]
    assert issubclass(cls, FaceSwapper)
    if behaviour not in ("tint", "identity"):
        raise ValueError(f"behaviour must be tint or identity, got {behaviour!r}")
    size = cls.default_input_size[0]
    n: int | str = "N" if batch else 1
    mean = np.asarray(cls.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(cls.std, np.float32).reshape(1, 3, 1, 1)
    order = SWAPPER_KINDS.index(kind) if kind in SWAPPER_KINDS else len(SWAPPER_KINDS)
    inits = [_const("mean", mean), _const("std", std), _const("zero", 0.0), _const("one", 1.0),
             _const("gain", 0.15 + 0.03 * order), _const("half", 0.5),  # each kind its own tint
             numpy_helper.from_array(np.array([-1, 3, 1, 1], np.int64), "feat_shape")]
    nodes = []
    if cls.takes_embedding:
        source_shape = [n, 512]
        tint = np.random.default_rng(seed + order).standard_normal((512, 3)).astype(np.float32)
        inits.append(_const("tint", tint))
        nodes += [helper.make_node("LpNormalization", ["source"], ["source_unit"], name="source_direction", axis=1, p=2),
                  helper.make_node("MatMul", ["source_unit", "tint"], ["feat_raw"], name="tint_project"),
                  helper.make_node("Tanh", ["feat_raw"], ["feat_unit"], name="tint_squash"),
                  helper.make_node("Reshape", ["feat_unit", "feat_shape"], ["feat"], name="tint_reshape")]
    else:
        source_size = cls.source_size  # type: ignore[attr-defined]
        source_shape = [n, 3, source_size, source_size]
        nodes += [helper.make_node("ReduceMean", ["source"], ["feat_mean"], name="source_colour", axes=[2, 3],
                                   keepdims=1),
                  helper.make_node("Sub", ["feat_mean", "half"], ["feat"], name="source_centre")]
    if behaviour == "identity":  # the target as it came in (denormalising kinds) or back in 0..1 (the others)
        nodes += [helper.make_node("Mul", ["feat", "zero"], ["nothing"], name="times_zero")]
        if cls.denormalise_output:
            nodes += [helper.make_node("Add", ["target", "nothing"], ["output"], name="identity")]
        else:
            nodes += [helper.make_node("Mul", ["target", "std"], ["scaled"], name="unstd"),
                      helper.make_node("Add", ["scaled", "mean"], ["unit"], name="unmean"),
                      helper.make_node("Add", ["unit", "nothing"], ["output"], name="identity")]
    else:
        nodes += [helper.make_node("Mul", ["target", "std"], ["scaled"], name="unstd"),
                  helper.make_node("Add", ["scaled", "mean"], ["unit"], name="unmean"),
                  helper.make_node("Sub", ["one", "unit"], ["inverted"], name="invert"),
                  helper.make_node("Mul", ["feat", "gain"], ["tint_scaled"], name="tint_gain"),
                  helper.make_node("Add", ["inverted", "tint_scaled"], ["tinted"], name="apply_tint"),
                  helper.make_node("Clip", ["tinted", "zero", "one"], ["swapped"], name="clip")]
        if cls.denormalise_output:
            nodes += [helper.make_node("Sub", ["swapped", "mean"], ["centred"], name="renorm_mean"),
                      helper.make_node("Div", ["centred", "std"], ["output"], name="renorm_std")]
        else:
            nodes += [helper.make_node("Identity", ["swapped"], ["output"], name="out")]
    target = helper.make_tensor_value_info("target", TensorProto.FLOAT, [n, 3, size, size])
    source = helper.make_tensor_value_info("source", TensorProto.FLOAT, source_shape)
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [n, 3, size, size])]
    if kind == "hyperswap":  # its export's second output: a face mask in 0..1 (unused, as in FaceFusion)
        nodes += [helper.make_node("ReduceMean", ["output"], ["level"], name="mask_level", axes=[1], keepdims=1),
                  helper.make_node("Mul", ["level", "zero"], ["level0"], name="mask_zero"),
                  helper.make_node("Add", ["level0", "one"], ["mask"], name="mask_one")]
        outputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [n, 1, size, size]))
    inputs = [source, target] if kind == "hyperswap" else [target, source]
    graph = helper.make_graph(nodes, f"{kind}_{behaviour}_standin", inputs, outputs, initializer=inits)
    return _model(graph)


def converter_model(seed: int = 5) -> onnx.ModelProto:
    """crossface's signature: `input` 1 x 512 (a raw ArcFace embedding) -> `output` 1 x 512, an affine map."""
    rng = np.random.default_rng(seed)
    matrix = (np.linalg.qr(rng.standard_normal((512, 512)))[0] * 1.5).astype(np.float32)
    bias = (rng.standard_normal(512) * 0.05).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "matrix"], ["projected"], name="project"),
             helper.make_node("Add", ["projected", "bias"], ["output"], name="shift")]
    graph = helper.make_graph(
        nodes, "crossface_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 512])],
        initializer=[_const("matrix", matrix), _const("bias", bias)],
    )
    return _model(graph)


def write_swapper_standins(target: Path, kinds: tuple[str, ...] = SWAPPER_KINDS, behaviour: str = "tint",
                           batch: bool = False) -> dict[str, dict]:
    """Write one stand-in per kind into `target` as an extra swapper role named after the kind (plus
    `<role>_embedding_converter` where the kind needs one); returns their manifest entries (without
    sha256 and size, which the caller adds)."""
    from pipeline.models.swapper import converter_role

    entries: dict[str, dict] = {}
    for kind in kinds:
        cls = KINDS[kind]
        onnx.save(swapper_model(kind, behaviour, batch), str(target / f"{kind}.onnx"))
        entries[kind] = {"file": f"{kind}.onnx", "kind": f"{kind}-standin", "input_size": list(cls.default_input_size)}
        if cls.needs_converter:  # type: ignore[attr-defined]
            onnx.save(converter_model(), str(target / f"{kind}_converter.onnx"))
            entries[converter_role(kind)] = {"file": f"{kind}_converter.onnx", "kind": f"{CONVERTER_KIND}-standin"}
    return entries
