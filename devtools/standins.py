"""Stand-in models with the exact input/output signatures of the real ones (a development tool).

This module lives in `devtools/`, outside the shipped packages: the container image never holds it.

The real weights (ArcFace w600k_r50, inswapper_128, a GFPGAN enhancer, an XSeg occluder, a BiSeNet
face parser) cannot be shipped in the repo or downloaded in CI. These small ONNX graphs let tests, benchmarks and a local run exercise the real
loading and inference code paths. They do not swap faces: the "swapper" inverts the face crop and
tints it by the source identity, which makes a swap easy to see and to test.

`pad_mb` grows a model to about that many megabytes with an extra branch whose weights are really used
(a runtime drops unused initializers, which would make a size proxy meaningless); its contribution is
scaled down so the outputs stay close. Proxies of the real file sizes serve the cold-start benchmark.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from devtools.enhancer_standins import write_enhancer_standins
from pipeline import atomic_symlink, manifest_document, plain_name, sha256_file, write_manifest_file

OPSET = 17
IR_VERSION = 8
STANDIN_NOTICE = "STAND-IN MODELS: the swaps they produce are NOT real face swaps"


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facefusion-fn-standin")
    model.ir_version = IR_VERSION
    if model.ByteSize() < 2**31 - 1:  # the checker cannot serialise 2 GB protos; proxies stay below anyway
        onnx.checker.check_model(model)
    return model


def _branch(x: str, out: str, width: int, pad_mb: float, prefix: str, seed: int) -> tuple[list, list]:
    """Nodes computing `out = (x @ A) @ B * 1e-3` with A, B sized to hold about `pad_mb` MB in total."""
    rng = np.random.default_rng(seed)
    in_dim = {"flat": 588, "source": 512}[x]
    hidden = max(int(pad_mb * 1024 * 1024 / 4 / (in_dim + width)), 1)
    a = rng.standard_normal((in_dim, hidden), dtype=np.float32) * np.float32(1 / np.sqrt(in_dim))
    b = rng.standard_normal((hidden, width), dtype=np.float32) * np.float32(1 / np.sqrt(hidden))
    nodes = [
        helper.make_node("MatMul", [x, f"{prefix}_a"], [f"{prefix}_h"], name=f"{prefix}_mm1"),
        helper.make_node("MatMul", [f"{prefix}_h", f"{prefix}_b"], [f"{prefix}_o"], name=f"{prefix}_mm2"),
        helper.make_node("Mul", [f"{prefix}_o", f"{prefix}_scale"], [out], name=f"{prefix}_scale_mul"),
    ]
    inits = [numpy_helper.from_array(a, f"{prefix}_a"), numpy_helper.from_array(b, f"{prefix}_b"),
             numpy_helper.from_array(np.array(1e-3, np.float32), f"{prefix}_scale")]
    return nodes, inits


def arcface_model(seed: int = 1, pad_mb: float = 0.0) -> onnx.ModelProto:
    """1x3x112x112 -> 1x512: centre the crop, pool to 14x14, project with a fixed random matrix."""
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((3 * 14 * 14, 512)).astype(np.float32) / 24.0
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], name="centre_mean", axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["input.1", "mean"], ["centred"], name="centre"),
        helper.make_node("AveragePool", ["centred"], ["pooled"], name="pool", kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
    ]
    initializers = [numpy_helper.from_array(proj, "proj")]
    if pad_mb > 0:
        nodes.append(helper.make_node("MatMul", ["flat", "proj"], ["projected"], name="project"))
        extra_nodes, extra_inits = _branch("flat", "extra", 512, pad_mb, "pad", seed + 10)
        nodes += [*extra_nodes, helper.make_node("Add", ["projected", "extra"], ["683"], name="pad_add")]
        initializers += extra_inits
    else:
        nodes.append(helper.make_node("MatMul", ["flat", "proj"], ["683"], name="project"))
    graph = helper.make_graph(
        nodes,
        "arcface_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])],
        initializer=initializers,
    )
    return _model(graph)


def inswapper_model(seed: int = 2, pad_mb: float = 0.0) -> onnx.ModelProto:
    """target 1x3x128x128 + source 1x512 -> 1x3x128x128, with the 512x512 emap as the last initializer."""
    rng = np.random.default_rng(seed)
    tint = rng.standard_normal((512, 3)).astype(np.float32) / 4.0
    emap = np.linalg.qr(rng.standard_normal((512, 512)))[0].astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["source", "tint"], ["tint_base" if pad_mb > 0 else "tint_raw"], name="tint_project"),
        helper.make_node("Tanh", ["tint_raw"], ["tint_unit"], name="tint_squash"),
        helper.make_node("Reshape", ["tint_unit", "tint_shape"], ["tint_map"], name="tint_reshape"),
        helper.make_node("Mul", ["tint_map", "tint_gain"], ["tint_scaled"], name="tint_gain_mul"),
        helper.make_node("Sub", ["one", "target"], ["inverted"], name="invert"),
        helper.make_node("Add", ["inverted", "tint_scaled"], ["tinted"], name="apply_tint"),
        helper.make_node("Clip", ["tinted", "zero", "one"], ["output"], name="clip"),
    ]
    initializers = [
        numpy_helper.from_array(tint, "tint"),
        numpy_helper.from_array(np.array([1, 3, 1, 1], dtype=np.int64), "tint_shape"),
        numpy_helper.from_array(np.array(0.15, dtype=np.float32), "tint_gain"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    if pad_mb > 0:
        extra_nodes, extra_inits = _branch("source", "tint_extra", 3, pad_mb, "pad", seed + 10)
        nodes = [nodes[0], *extra_nodes, helper.make_node("Add", ["tint_base", "tint_extra"], ["tint_raw"], name="pad_add"),
                 *nodes[1:]]
        initializers += extra_inits
    initializers.append(numpy_helper.from_array(emap, "emap"))
    graph = helper.make_graph(
        nodes,
        "inswapper_standin",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=initializers,
    )
    return _model(graph)


def identity_swapper_model(batch: bool = False) -> onnx.ModelProto:
    """inswapper_128's signature whose output is exactly its target input (the source is used, times 0).

    For measuring what alignment, pixel boost and paste back alone cost in fidelity. `batch`: a free
    batch axis `N` on target, source and output (the published inswapper_128 has a fixed batch of 1).
    """
    rng = np.random.default_rng(3)
    emap = np.linalg.qr(rng.standard_normal((512, 512)))[0].astype(np.float32)
    n: int | str = "N" if batch else 1
    nodes = [
        helper.make_node("ReduceSum", ["source"], ["source_sum"], name="source_sum", keepdims=1),
        helper.make_node("Mul", ["source_sum", "zero"], ["nothing"], name="times_zero"),
        helper.make_node("Reshape", ["nothing", "shape"], ["nothing4"], name="to_nchw"),
        helper.make_node("Add", ["target", "nothing4"], ["output"], name="identity"),
    ]
    graph = helper.make_graph(
        nodes,
        "inswapper_identity_standin",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [n, 3, 128, 128]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [n, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [n, 3, 128, 128])],
        initializer=[
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array([-1, 1, 1, 1], dtype=np.int64), "shape"),
            numpy_helper.from_array(emap, "emap"),
        ],
    )
    return _model(graph)


# Where the stand-in occluder says something covers the face: rows and columns [start, stop) of its
# 256x256 output (the mouth and chin of an aligned crop, as a hand in front of it would be).
OCCLUDED_RECT = (150, 230, 60, 200)


def occluder_model(rect: tuple[int, int, int, int] = OCCLUDED_RECT) -> onnx.ModelProto:
    """An XSeg-style occluder: 1x256x256x3 (NHWC, BGR in 0..1) named `input` -> 1x256x256x1 in 0..1.

    It reports the face visible (1) everywhere except the rectangle `rect` (rows y0:y1, columns x0:x1),
    which it reports occluded (0), whatever the input (the input is used, times 0).
    """
    y0, y1, x0, x1 = rect
    mask = np.ones((1, 256, 256, 1), dtype=np.float32)
    mask[0, y0:y1, x0:x1, 0] = 0.0
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], name="mean", axes=[0, 1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"], name="times_zero"),
        helper.make_node("Add", ["mask", "nothing"], ["output"], name="mask"),
    ]
    graph = helper.make_graph(
        nodes,
        "xseg_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 256, 256, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 256, 256, 1])],
        initializer=[numpy_helper.from_array(mask, "mask"), numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    return _model(graph)


def parser_layout() -> np.ndarray:
    """The stand-in parser's 64x64 class map of an aligned face (one cell: 8x8 pixels of its 512 input).

    Placed on the swapper's landmark template at 512 (eyes near (185, 207) and (326, 206), nose tip
    (256, 287), mouth corners (198, 369) and (315, 369)): background, skin, eyebrows, eyes, nose, lips and
    mouth with BiSeNet's CelebAMask-HQ class numbers.
    """
    layout = np.zeros((64, 64), dtype=np.int64)
    yy, xx = np.mgrid[0:64, 0:64]
    layout[((xx - 32) / 22.0) ** 2 + ((yy - 34) / 28.0) ** 2 <= 1] = 1  # skin
    layout[19:22, 18:28] = 2  # left eyebrow (image left)
    layout[19:22, 36:46] = 3  # right eyebrow
    layout[((xx - 23) / 4.0) ** 2 + ((yy - 26) / 2.0) ** 2 <= 1] = 4  # left eye
    layout[((xx - 41) / 4.0) ** 2 + ((yy - 26) / 2.0) ** 2 <= 1] = 5  # right eye
    layout[29:38, 29:36] = 10  # nose
    layout[43:45, 25:40] = 12  # upper lip
    layout[45:46, 25:40] = 11  # mouth
    layout[46:48, 25:40] = 13  # lower lip
    return layout


def parser_model() -> onnx.ModelProto:
    """A BiSeNet-style face parser: 1x3x512x512 (RGB, ImageNet-normalised) named `input` -> 1x19x512x512
    class scores: 10 for the class `parser_layout` gives a pixel, 0 for the others, whatever the input."""
    scores = np.zeros((1, 19, 64, 64), dtype=np.float32)
    layout = parser_layout()
    for cls in range(19):
        scores[0, cls][layout == cls] = 10.0
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], name="mean", axes=[0, 1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"], name="times_zero"),
        helper.make_node("Add", ["scores", "nothing"], ["coarse"], name="scores"),
        helper.make_node("Resize", ["coarse", "", "scales"], ["output"], name="upsample", mode="nearest"),
    ]
    graph = helper.make_graph(
        nodes,
        "bisenet_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 19, 512, 512])],
        initializer=[numpy_helper.from_array(scores, "scores"), numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                     numpy_helper.from_array(np.array([1, 1, 8, 8], dtype=np.float32), "scales")],
    )
    return _model(graph)


def enhancer_model() -> onnx.ModelProto:
    """1x3x512x512 in [-1, 1] -> same: a mild sharpening filter, clipped."""
    kernel = np.array([[0, -0.25, 0], [-0.25, 2.0, -0.25], [0, -0.25, 0]], dtype=np.float32)
    weights = np.stack([kernel[None]] * 3).astype(np.float32)  # 3x1x3x3, depthwise
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["sharp"], name="sharpen", group=3, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["sharp", "lo", "hi"], ["output"], name="clip"),
    ]
    graph = helper.make_graph(
        nodes,
        "enhancer_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array(-1.0, dtype=np.float32), "lo"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "hi"),
        ],
    )
    return _model(graph)


def detector_model() -> onnx.ModelProto:
    """SCRFD's 9-output signature reporting one fixed face, for runs without a real detector file.

    The face sits at (320, 240) of the 640x640 letterboxed input, about 160 px wide.
    """
    outputs, initializers, nodes = [], [], []
    center = np.array([320.0, 240.0], dtype=np.float32)
    kps = np.array([[290, 215], [350, 215], [320, 250], [295, 285], [345, 285]], dtype=np.float32)
    tensors: dict[str, np.ndarray] = {}
    for stride in (8, 16, 32):
        count = (640 // stride) ** 2 * 2
        scores = np.zeros((1, count, 1), np.float32)
        boxes = np.zeros((1, count, 4), np.float32)
        points = np.zeros((1, count, 10), np.float32)
        if stride == 32:
            anchor = (int(center[1]) // 32 * 20 + int(center[0]) // 32) * 2
            scores[0, anchor, 0] = 0.9
            boxes[0, anchor] = np.array([80, 90, 80, 110], np.float32) / stride
            points[0, anchor] = (kps - center).reshape(-1) / stride
        tensors[f"score_{stride}"], tensors[f"bbox_{stride}"], tensors[f"kps_{stride}"] = scores, boxes, points
    order = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    # Multiply by zero times the input's mean so every output depends on the input like a real model.
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["m"], axes=[0, 1, 2, 3], keepdims=0))
    nodes.append(helper.make_node("Mul", ["m", "zero"], ["z"]))
    initializers.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    for name in order:
        initializers.append(numpy_helper.from_array(tensors[name], f"{name}_c"))
        nodes.append(helper.make_node("Add", [f"{name}_c", "z"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(tensors[name].shape)))
    graph = helper.make_graph(
        nodes,
        "scrfd_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])],
        outputs,
        initializer=initializers,
    )
    return _model(graph)


def padded_detector(path: Path, pad_mb: float) -> onnx.ModelProto:
    """A copy of a real SCRFD whose first score output also depends on a `pad_mb` MB weight branch."""
    model = onnx.load(str(path))
    graph = model.graph
    first = graph.output[0].name
    input_name = graph.input[0].name
    for node in graph.node:
        node.output[:] = [f"{first}_raw" if o == first else o for o in node.output]
    rng = np.random.default_rng(11)
    hidden = max(int(pad_mb * 1024 * 1024 / 4 / 4), 1)
    a = rng.standard_normal((3, hidden), dtype=np.float32)
    b = rng.standard_normal((hidden, 1), dtype=np.float32)
    graph.initializer.extend([numpy_helper.from_array(a, "pad_a"), numpy_helper.from_array(b, "pad_b"),
                              numpy_helper.from_array(np.array(0.0, np.float32), "pad_zero")])
    graph.node.extend([
        helper.make_node("GlobalAveragePool", [input_name], ["pad_pool"], name="pad_pool"),
        helper.make_node("Flatten", ["pad_pool"], ["pad_flat"], name="pad_flatten", axis=1),
        helper.make_node("MatMul", ["pad_flat", "pad_a"], ["pad_h"], name="pad_mm1"),
        helper.make_node("MatMul", ["pad_h", "pad_b"], ["pad_o"], name="pad_mm2"),
        helper.make_node("Mul", ["pad_o", "pad_zero"], ["pad_z"], name="pad_mul"),
        helper.make_node("Add", [f"{first}_raw", "pad_z"], [first], name="pad_add"),
    ])
    return model


def write_test_models(
    directory: Path,
    detector: Path | None = None,
    version: str = "test",
    enhancer: bool = True,
    pad_mb: dict[str, float] | None = None,
    link_current: bool = True,
    maskers: bool = False,
    swapper: str = "tint",
    swappers: bool = False,
    extra_enhancers: bool = False,
) -> Path:
    """Write a complete stand-in model set to `directory/<version>` and point `current` at it.

    `maskers`: with the optional occluder and face_parser roles (`make-test-models` and `serve` write
    them; off by default here so that sets built in code keep their four files). `extra_enhancers`: the
    codeformer, gpen and restoreformer++ roles too (devtools/enhancer_standins.py). `swapper`: `tint` (the usual stand-in),
    `identity` (output = its target input) or `identity-batch` (the same with a free batch axis).
    `swappers`: with a stand-in of every other swapper kind as an extra role named after its kind
    (devtools/swapper_standins.py), for `swapper=hyperswap` and the like.

    The set is built in a hidden folder beside its final place and renamed into place whole, so a
    failure (a detector that is not ONNX, a full disk) leaves no partial set; an existing
    `directory/<version>` is replaced. `current` is (re)pointed only when it is missing or a symlink.
    """
    if not plain_name(version):
        raise ValueError(f"a model set version must be a plain folder name, got {version!r}")
    pad_mb = pad_mb or {}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / version
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".partial", dir=directory))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the set from a server running as another user
        _write_set(staging, detector, version, enhancer, pad_mb, maskers, swapper, swappers, extra_enhancers)
        if target.is_dir() and not target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".old", dir=directory))
            target.rename(old / version)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    current = directory / "current"
    if link_current and version != "current" and (current.is_symlink() or not current.exists()):
        atomic_symlink(current, version)
    return target


def _write_set(target: Path, detector: Path | None, version: str, enhancer: bool, pad_mb: dict[str, float],
               maskers: bool = True, swapper: str = "tint", swappers: bool = False,
               extra_enhancers: bool = False) -> None:
    if detector is not None and pad_mb.get("detector"):
        onnx.save(padded_detector(Path(detector), pad_mb["detector"]), str(target / "det.onnx"))
        det_kind = "scrfd"
    elif detector is not None:
        (target / "det.onnx").write_bytes(Path(detector).read_bytes())
        det_kind = "scrfd"
    else:
        onnx.save(detector_model(), str(target / "det.onnx"))
        det_kind = "scrfd-standin"
    onnx.save(arcface_model(pad_mb=pad_mb.get("recognizer", 0.0)), str(target / "rec.onnx"))
    if swapper == "tint":
        onnx.save(inswapper_model(pad_mb=pad_mb.get("swapper", 0.0)), str(target / "swap.onnx"))
    elif swapper in ("identity", "identity-batch"):
        onnx.save(identity_swapper_model(batch=swapper == "identity-batch"), str(target / "swap.onnx"))
    else:
        raise ValueError(f"swapper must be tint, identity or identity-batch, got {swapper!r}")
    entries = {
        "detector": {"file": "det.onnx", "kind": det_kind, "input_size": [640, 640]},
        "recognizer": {"file": "rec.onnx", "kind": "arcface-standin", "input_size": [112, 112]},
        "swapper": {"file": "swap.onnx", "kind": "inswapper-standin", "input_size": [128, 128]},
    }
    if enhancer:
        onnx.save(enhancer_model(), str(target / "enhance.onnx"))
        entries["enhancer"] = {"file": "enhance.onnx", "kind": "gfpgan-standin", "input_size": [512, 512]}
    if extra_enhancers:
        entries.update(write_enhancer_standins(target))
    if maskers:
        onnx.save(occluder_model(), str(target / "occluder.onnx"))
        onnx.save(parser_model(), str(target / "parser.onnx"))
        entries["occluder"] = {"file": "occluder.onnx", "kind": "xseg-standin", "input_size": [256, 256]}
        entries["face_parser"] = {"file": "parser.onnx", "kind": "bisenet-standin", "input_size": [512, 512]}
    if swappers:
        from .swapper_standins import write_swapper_standins

        entries.update(write_swapper_standins(target))
    for spec in entries.values():
        path = target / spec["file"]
        spec.update(sha256=sha256_file(path), size=path.stat().st_size)
    write_manifest_file(target, manifest_document(f"stand-in models ({STANDIN_NOTICE})", version, entries))
