"""Batching: a free batch axis prepared for graphs exported with batch 1, micro-batching of concurrent runs,
one swapper call for all faces of a frame, and fp16 graphs kept only within tolerance.

Graphs are the stand-ins (devtools/standins.py, all exported with a fixed batch of 1) and the real SCRFD.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from devtools import standins
from devtools.enhancer_standins import enhancer_standin
from pipeline import Settings, load_fuser, load_models
from pipeline.artefacts import GraphRecipe, build_optimised, graph_notes
from pipeline.batch_axis import batch_matches, free_batch_axis, has_free_batch, probe_feeds
from pipeline.batching import MicroBatcher
from pipeline.config import GpuSettings
from pipeline.fusion_types import FuseOptions
from pipeline.manifest import ModelEntry
from pipeline.precision import FP16_TOLERANCE, fp16_error, fp16_wanted, to_fp16
from pipeline.selection import Selection
from pipeline.sessions import provider_options

from .conftest import RowCounter, shared_file

CPU = ["CPUExecutionProvider"]


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(data, providers=CPU)


def _entry(tmp_path, model: onnx.ModelProto, role: str = "recognizer", kind: str = "arcface") -> ModelEntry:
    path = tmp_path / f"{role}.onnx"
    onnx.save(model, str(path))
    return ModelEntry(role=role, path=path, sha256=f"{role}-{path.stat().st_size}", kind=kind, category=role)


# -- a free batch axis -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["arcface", "inswapper", "enhancer", "scrfd"])
def test_a_batch_of_two_equals_two_single_runs_once_the_axis_is_freed(name):
    model = onnx.load(str(shared_file("models", "scrfd_2.5g_bnkps.onnx"))) if name == "scrfd" else \
        getattr(standins, f"{name}_model")()
    original = _session(model)
    assert original.get_inputs()[0].shape[0] == 1
    freed = _session(free_batch_axis(model))
    assert has_free_batch(freed)
    feeds = probe_feeds(original.get_inputs(), 3)
    together = freed.run(None, feeds)
    for row in range(3):
        alone = original.run(None, {k: v[row:row + 1] for k, v in feeds.items()})
        for got, want in zip(together, alone, strict=True):
            np.testing.assert_allclose(got[row:row + 1], want, rtol=1e-4, atol=1e-5)


def test_scrfd_resize_sizes_become_scales_or_the_second_frame_gets_the_first_frames_features():
    model = onnx.load(str(shared_file("models", "scrfd_2.5g_bnkps.onnx")))
    freed = free_batch_axis(model)
    resizes = [n for n in freed.graph.node if n.op_type == "Resize"]
    assert resizes and all(len(n.input) == 3 for n in resizes)
    assert batch_matches(_session(model), _session(freed)) == (True, "")


def test_a_graph_whose_output_ignores_the_batch_is_refused_with_the_reason():
    model = standins.occluder_model()  # a constant 1x256x256x1 mask: its batch cannot follow the input's
    ok, why = batch_matches(_session(model), _session(free_batch_axis(model)))
    assert not ok and "output output of a batch of 2" in why


def test_prepared_graphs_have_a_batch_axis_only_where_the_probe_agrees(tmp_path):
    graphs = {}
    for role, kind, model in [("recognizer", "arcface", standins.arcface_model()),
                              ("occluder", "xseg", standins.occluder_model())]:
        graph = build_optimised(_entry(tmp_path, model, role, kind), CPU, tmp_path / "cache", GraphRecipe())
        graphs[role] = graph
    recognizer, occluder = (_session(g) for g in graphs.values())
    assert has_free_batch(recognizer) and graph_notes(graphs["recognizer"])["batch"] is True
    assert occluder.get_inputs()[0].shape[0] == 1
    notes = graph_notes(graphs["occluder"])
    assert notes["batch"] is False and "differs from two single runs" in notes["batch_why"]


def test_codeformers_weight_keeps_its_graph_at_batch_1_with_the_true_reason(tmp_path):
    """The rewrite gives the (1,) float64 `weight` the batch axis too; 2 weights no longer broadcast
    over the image, and the note says so (not a complaint about the probe's own input type)."""
    entry = _entry(tmp_path, enhancer_standin("codeformer"), "codeformer", "codeformer-standin")
    graph = build_optimised(entry, CPU, tmp_path / "cache", GraphRecipe())
    assert [i.shape[0] for i in _session(graph).get_inputs()] == [1, 1]
    notes = graph_notes(graph)
    assert notes["batch"] is False and "running Mul node" in notes["batch_why"]
    assert "data type" not in notes["batch_why"]


def test_batch_max_1_prepares_graphs_as_published(tmp_path):
    entry = _entry(tmp_path, standins.arcface_model())
    graph = build_optimised(entry, CPU, tmp_path / "cache", GraphRecipe(batch=False))
    assert _session(graph).get_inputs()[0].shape[0] == 1


# -- micro-batching --------------------------------------------------------------------------------
def _concurrently(count: int, call) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except Exception as exc:  # collected: the test looks at what each caller got
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_callers_get_exactly_their_own_results_from_merged_runs():
    model = onnx.load(str(shared_file("models", "scrfd_2.5g_bnkps.onnx")))
    session = _session(free_batch_axis(model))
    batcher = MicroBatcher(session, wait_ms=500, max_size=32)
    frames = [probe_feeds(session.get_inputs(), 1, seed=i) for i in range(8)]
    results = _concurrently(8, lambda i: batcher.run(None, frames[i]))
    for i, got in enumerate(results):
        assert not isinstance(got, Exception), got
        for a, b in zip(got, session.run(None, frames[i]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert batcher.calls == 8 and batcher.runs < 8  # merged


def test_an_error_in_a_batched_run_fails_every_caller_of_that_batch():
    # A free batch axis on the input, a Reshape pinned to one row: a batch of 1 runs, a merged batch fails.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "pinned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array([1, 4], np.int64), "shape")])
    session = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    slow = RowCounter(session, delay_s=0.05)
    batcher = MicroBatcher(slow, wait_ms=500, max_size=32)
    results = _concurrently(6, lambda i: batcher.run(None, {"x": np.full((1, 4), i, np.float32)}))
    errors = [r for r in results if isinstance(r, Exception)]
    assert batcher.runs < 6 and errors
    assert len({str(e) for e in errors}) == 1 and "Reshape" in str(errors[0])
    assert len(errors) == 6 - sum(1 for n in slow.rows if n == 1)
    for i, r in enumerate(results):
        if not isinstance(r, Exception):
            assert np.array_equal(r[0], np.full((1, 4), i, np.float32))


def test_no_run_holds_more_rows_than_batch_max():
    session = _session(free_batch_axis(standins.arcface_model()))
    slow = RowCounter(session, delay_s=0.05)
    batcher = MicroBatcher(slow, wait_ms=500, max_size=3)
    crops = [probe_feeds(session.get_inputs(), 1, seed=i) for i in range(10)]
    results = _concurrently(10, lambda i: batcher.run(None, crops[i]))
    assert max(slow.rows) <= 3 and sum(slow.rows) == 10 and len(slow.rows) < 10
    for i, got in enumerate(results):
        np.testing.assert_allclose(got[0], session.run(None, crops[i])[0], rtol=1e-4, atol=1e-6)


def test_a_call_larger_than_the_batch_bound_runs_alone():
    session = _session(free_batch_axis(standins.arcface_model()))
    batcher = MicroBatcher(session, wait_ms=100, max_size=2)
    feeds = probe_feeds(session.get_inputs(), 3)
    np.testing.assert_allclose(batcher.run(None, feeds)[0], session.run(None, feeds)[0], rtol=1e-5)
    assert (batcher.calls, batcher.runs) == (1, 1)


def test_runs_are_padded_to_a_bucket_size_and_each_caller_gets_only_its_rows():
    """A batch of 5 runs as 8 (one more shape would cost ~100 ms on CUDA), and the padding never shows."""
    session = _session(free_batch_axis(standins.arcface_model()))
    slow = RowCounter(session, delay_s=0.05)
    batcher = MicroBatcher(slow, wait_ms=100, max_size=32)
    feeds = probe_feeds(session.get_inputs(), 5)
    got = batcher.run(None, feeds)[0]
    assert slow.rows == [8] and got.shape[0] == 5
    np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-6)
    assert [batcher.padded_size(n) for n in (1, 2, 3, 5, 9, 17, 29, 32)] == [1, 2, 4, 8, 16, 32, 32, 32]
    crops = [probe_feeds(session.get_inputs(), 1, seed=i) for i in range(6)]
    results = _concurrently(6, lambda i: batcher.run(None, crops[i]))  # merged runs are padded too
    assert set(slow.rows) <= set(batcher.buckets)
    for i, row in enumerate(results):
        np.testing.assert_allclose(row[0], session.run(None, crops[i])[0], rtol=1e-4, atol=1e-6)


def test_warm_runs_every_bucket_size_once():
    session = _session(free_batch_axis(standins.arcface_model()))
    slow = RowCounter(session, delay_s=0.05)
    assert MicroBatcher(slow, wait_ms=2, max_size=12).warm() == [1, 2, 4, 8, 12] and slow.rows == [1, 2, 4, 8, 12]


def test_a_detector_with_a_free_image_size_is_warmed_at_the_size_it_has_run():
    """SCRFD's height and width are free: the graph alone gives no shape to warm, so before this every
    bucket's first run on CUDA (~100 ms) fell on requests. The warm-up's exercise runs it at 640x640
    through the batcher first; `warm` then runs every bucket at that size, with the feeds' own type."""
    model = onnx.load(str(shared_file("models", "scrfd_2.5g_bnkps.onnx")))  # exported at 640x640 ...
    for axis, name in ((2, "height"), (3, "width")):  # ... insightface's det_10g leaves both free
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    session = _session(free_batch_axis(model))
    assert session.get_inputs()[0].shape[1:] == [3, "height", "width"]
    shapes: list[tuple] = []

    class Shapes(RowCounter):
        def run(self, names, feeds, options=None):
            shapes.append(next(iter(feeds.values())).shape)
            return super().run(names, feeds, options)

    batcher = MicroBatcher(Shapes(session), wait_ms=2, max_size=4)
    assert batcher.warm() == [] and shapes == []  # nothing run yet: nothing to warm
    frame = np.random.default_rng(1).uniform(-1, 1, (1, 3, 640, 640)).astype(np.float32)
    batcher.run(None, {session.get_inputs()[0].name: frame})
    assert batcher.warm() == [1, 2, 4]
    assert shapes[1:] == [(1, 3, 640, 640), (2, 3, 640, 640), (4, 3, 640, 640)]


def test_the_batch_sizes_are_warmed_after_the_pod_turns_ready(model_root, tmp_path):
    """Readiness does not wait for them (cold start); /readyz's timings say when they were done."""
    from warmup import Warmup

    settings = Settings.from_env({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"),
                                  "EXECUTION_PROVIDERS": "cpu", "BATCH_WAIT_MS": "2"})
    warm = Warmup(settings=settings, exercise=True)
    warm.ensure_started()
    assert warm.readiness.done.wait(60) and warm.readiness.state == "ready", warm.readiness.reason
    batchers = warm.fuser.models.batchers
    assert {"swapper", "recognizer"} <= set(batchers)
    for _ in range(600):
        if "batch_warmup" in warm.readiness.as_dict()["timings_s"]:
            break
        threading.Event().wait(0.05)
    assert "batch_warmup" in warm.readiness.as_dict()["timings_s"]


def test_batch_wait_0_turns_micro_batching_off_and_it_is_off_by_default(model_root, tmp_path):
    cache = tmp_path / "cache"
    on = load_models(Settings(model_path=model_root, cache_path=cache, execution_providers="cpu",
                              batching=Settings.from_env({"BATCH_WAIT_MS": "2"}).batching))
    assert isinstance(on.models["swapper"].session, MicroBatcher)
    assert isinstance(on.models["recognizer"].session, MicroBatcher)
    for env in ({"BATCH_WAIT_MS": "0"}, {}):
        bundle = load_models(Settings(model_path=model_root, cache_path=cache, execution_providers="cpu",
                                      batching=Settings.from_env(env).batching))
        assert not any(isinstance(m.session, MicroBatcher) for m in bundle.models.values())
    assert Settings.from_env({}).batching.wait == 0.0  # measured slower on an H100 (README, GPU)


def test_on_a_modelled_gpu_merging_makes_fewer_runs_and_serves_more(capsys):
    """bench.batching_model: runs take turns on one lock and cost a launch overhead plus a little per row,
    as on a GPU. Thirty-two callers through the real wrapper share runs, and the same callers without it
    make one run each; the table says so (rates are printed, compared only as 'merged serves more')."""
    from bench.batching_model import main

    rows = main(["--concurrency", "32", "--requests", "96", "--detector", "4+0.1", "--swapper", "4+0.1",
                 "--cpu-ms", "2"])
    (_, _, alone, _, alone_runs), (_, _, merged, _, merged_runs) = rows
    assert alone_runs == "detector 96/96, swapper 96/96"
    runs = [int(part.split()[1].split("/")[0]) for part in merged_runs.split(", ")]
    assert all(r < 96 for r in runs), merged_runs
    assert merged > alone  # 8.2 ms of turns per request alone; merged runs share them
    assert "without merging at most 122 requests/s" in capsys.readouterr().out  # 1000 / (4.1 + 4.1)


def test_batching_settings_are_checked():
    with pytest.raises(ValueError, match="BATCH_WAIT_MS must be at least 0.*BATCH_MAX must be at least 1.*MODEL_FP16"):
        Settings.from_env({"BATCH_WAIT_MS": "-1", "BATCH_MAX": "0", "MODEL_FP16": "half"})


# -- one swapper call per frame --------------------------------------------------------------------
@pytest.fixture(scope="module")
def solvay_runs(model_root, tmp_path_factory):
    """The 29-face Solvay photo, faces=all, with BATCH_MAX 32 and 1: the images and the swapper's runs."""
    target = shared_file("images", "solvay_conference_1927.png").read_bytes()
    source = shared_file("images", "obama.jpg").read_bytes()
    cache = tmp_path_factory.mktemp("batch-cache")
    out = {}
    for batch_max in (32, 1):
        fuser = load_fuser(Settings(model_path=model_root, cache_path=cache, execution_providers="cpu",
                                    batching=Settings.from_env({"BATCH_MAX": str(batch_max)}).batching))
        counter = RowCounter(fuser.swapper.session)
        fuser.swapper.session = counter
        result = fuser.fuse_bytes(source, target, FuseOptions(selection=Selection("all"), output_format="png"))
        out[batch_max] = (result, counter.rows)
    return out


def test_all_faces_of_a_frame_are_swapped_in_one_run(solvay_runs):
    result, rows = solvay_runs[32]
    assert result.report.faces_swapped >= 20
    assert rows == [result.report.faces_swapped]


def test_batch_max_1_swaps_face_by_face_and_gives_the_same_image(solvay_runs):
    batched, _ = solvay_runs[32]
    single, rows = solvay_runs[1]
    assert rows == [1] * single.report.faces_swapped
    a = cv2.imdecode(np.frombuffer(batched.data, np.uint8), -1).astype(int)
    b = cv2.imdecode(np.frombuffer(single.data, np.uint8), -1).astype(int)
    diff = np.abs(a - b)
    # float summation order only: measured 27 of 19.5 million channel values off, by 1 or 2 levels
    assert diff.max() <= 2 and (diff > 0).mean() < 1e-4


# -- the enhancer: faces whose regions do not meet in one run ----------------------------------------
def _enhancing(model_root: Path, cache: Path, batch_max: int, optimised: bool = True):
    """A fuser with BATCH_MAX `batch_max` whose enhancer's session counts its runs' rows."""
    fuser = load_fuser(Settings(model_path=model_root, cache_path=cache, execution_providers="cpu",
                                optimised_graphs=optimised,
                                batching=Settings.from_env({"BATCH_MAX": str(batch_max)}).batching))
    counter = RowCounter(fuser.enhancer.session)
    fuser.enhancer.session = counter
    return fuser, counter


def _enhance_all(fuser, source: bytes, target: bytes) -> tuple[int, np.ndarray]:
    options = FuseOptions(selection=Selection("all"), enhance=True, output_format="png")
    result = fuser.fuse_bytes(source, target, options)
    assert result.report.enhanced
    return result.report.faces_swapped, cv2.imdecode(np.frombuffer(result.data, np.uint8), -1).astype(int)


def _same_image(a: np.ndarray, b: np.ndarray, max_levels: int = 2) -> None:
    diff = np.abs(a - b)
    assert diff.max() <= max_levels and (diff > 0).mean() < 1e-4  # the swapper's batching tolerance (above)


@pytest.fixture(scope="module")
def face_grid() -> bytes:
    """Six copies of a portrait, 60 px apart: six faces whose enhancer regions do not meet."""
    tile = cv2.resize(cv2.imread(str(shared_file("images", "obama.jpg"))), None, fx=0.5, fy=0.5)
    h, w, gap = *tile.shape[:2], 60
    canvas = np.full((2 * h + 3 * gap, 3 * w + 4 * gap, 3), 128, np.uint8)
    for r in range(2):
        for c in range(3):
            canvas[gap + r * (h + gap):gap + r * (h + gap) + h, gap + c * (w + gap):gap + c * (w + gap) + w] = tile
    return cv2.imencode(".png", canvas)[1].tobytes()


def test_solvay_is_enhanced_in_a_few_runs_with_the_face_by_face_image(model_root, tmp_path_factory):
    """Neighbouring faces' regions meet in this photo; the per-face loop enhances a face from the frame
    its earlier neighbour was pasted into, so those faces go in later runs and the image stays the same."""
    target = shared_file("images", "solvay_conference_1927.png").read_bytes()
    source = shared_file("images", "obama.jpg").read_bytes()
    cache = tmp_path_factory.mktemp("enh-batch-cache")
    batched, batched_runs = _enhancing(model_root, cache, 32)
    faces, image = _enhance_all(batched, source, target)
    assert faces >= 20 and sum(batched_runs.rows) == faces
    assert max(batched_runs.rows) > 1 and len(batched_runs.rows) < faces // 2
    # the same swapped frame enhanced face by face, as the fuser's loop did: the very same pixels
    swapped = batched.fuse_bytes(source, target, FuseOptions(selection=Selection("all"), output_format="png"))
    frame = cv2.imdecode(np.frombuffer(swapped.data, np.uint8), -1)
    detected = batched.detect(batched.decode(target))
    for entry in swapped.report.faces:
        if entry["swapped"]:
            batched.enhancer.enhance_into(frame, detected[entry["index"]])
    assert np.array_equal(frame.astype(int), image)
    # and BATCH_MAX=1 end to end: the swapper's rows differ by up to 2 levels (above), which the stand-in
    # enhancer's sharpening (centre weight 2, blend 0.8) carries to up to 3 on those few pixels
    single, single_runs = _enhancing(model_root, cache, 1)
    single_faces, single_image = _enhance_all(single, source, target)
    assert single_faces == faces and single_runs.rows == [1] * faces
    _same_image(image, single_image, max_levels=3)


def test_faces_apart_are_enhanced_in_one_run_per_chunk_of_batch_max(model_root, tmp_path_factory, face_grid):
    source = shared_file("images", "obama.jpg").read_bytes()
    cache = tmp_path_factory.mktemp("enh-grid-cache")
    images = {}
    for batch_max, runs in ((32, [6]), (4, [4, 2]), (1, [1] * 6)):
        fuser, counter = _enhancing(model_root, cache, batch_max)
        faces, images[batch_max] = _enhance_all(fuser, source, face_grid)
        assert faces == 6 and counter.rows == runs
    _same_image(images[32], images[1])
    _same_image(images[4], images[1])


def test_an_enhancer_graph_with_batch_1_enhances_face_by_face(model_root, tmp_path_factory, face_grid):
    source = shared_file("images", "obama.jpg").read_bytes()
    fuser, counter = _enhancing(model_root, tmp_path_factory.mktemp("enh-plain-cache"), 32, optimised=False)
    assert fuser.enhancer.session.get_inputs()[0].shape[0] == 1  # the stand-in as published
    faces, image = _enhance_all(fuser, source, face_grid)
    assert counter.rows == [1] * faces
    batched, _ = _enhancing(model_root, tmp_path_factory.mktemp("enh-grid-cache-2"), 32)
    _same_image(image, _enhance_all(batched, source, face_grid)[1])


def test_reference_mode_embeds_every_candidate_in_one_run(model_root, tmp_path):
    fuser = load_fuser(Settings(model_path=model_root, cache_path=tmp_path, execution_providers="cpu"))
    counter = RowCounter(fuser.embedder.session)
    fuser.embedder.session = counter
    two = shared_file("images", "two_people.jpg").read_bytes()
    obama = shared_file("images", "obama.jpg").read_bytes()
    result = fuser.fuse_bytes(obama, two, FuseOptions(selection=Selection("reference", reference_threshold=0.0), reference=obama))
    candidates = result.report.faces_found
    assert candidates >= 2 and max(counter.rows) == candidates
    single = [fuser.embedder.embed(fuser.decode(two).bgr, f) for f in fuser.detect(fuser.decode(two))]
    many = fuser.embedder.embed_many(fuser.decode(two).bgr, fuser.detect(fuser.decode(two)))
    for a, b in zip(single, many, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- fp16 ------------------------------------------------------------------------------------------
def _overflowing_model() -> onnx.ModelProto:
    """y = (x * 1000)^2 / 1e6: fine in float32, infinite in float16 (65504 at most)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "k"], ["big"]), helper.make_node("Mul", ["big", "big"], ["sq"]),
         helper.make_node("Div", ["sq", "m"], ["output"])], "overflow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
        initializer=[numpy_helper.from_array(np.array(1000.0, np.float32), "k"),
                     numpy_helper.from_array(np.array(1e6, np.float32), "m")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_conversion_keeps_float32_inputs_and_outputs_and_halves_the_weights():
    model = standins.inswapper_model()
    half = to_fp16(model)
    session = _session(half)
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"] * 2
    assert [o.type for o in session.get_outputs()] == ["tensor(float)"]
    assert {t.data_type for t in half.graph.initializer if t.name == "tint"} == {TensorProto.FLOAT16}
    assert fp16_error(_session(model), session) <= FP16_TOLERANCE


def test_fp16_is_refused_when_outputs_leave_the_tolerance(tmp_path):
    model = _overflowing_model()
    assert fp16_error(_session(model), _session(to_fp16(model))) > FP16_TOLERANCE
    entry = _entry(tmp_path, model, "enhancer", "gfpgan")
    graph = build_optimised(entry, CPU, tmp_path / "cache", GraphRecipe(batch=False, fp16=True))
    notes = graph_notes(graph)
    assert notes["fp16"] is False and "of their range" in notes["fp16_why"]
    feeds = probe_feeds(_session(model).get_inputs(), 1)
    np.testing.assert_allclose(_session(graph).run(None, feeds)[0], _session(model).run(None, feeds)[0],
                               rtol=1e-5)


def test_fp16_is_served_when_within_tolerance(tmp_path):
    entry = _entry(tmp_path, standins.arcface_model())
    graph = build_optimised(entry, CPU, tmp_path / "cache", GraphRecipe(fp16=True))
    notes = graph_notes(graph)
    assert notes["fp16"] is True and notes["batch"] is True and notes["fp16_error"] <= FP16_TOLERANCE
    assert has_free_batch(_session(graph))


def test_model_fp16_auto_means_cuda_with_tensor_cores_only():
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert fp16_wanted("auto", cuda, capability=lambda _: "9.0")
    assert not fp16_wanted("auto", cuda, capability=lambda _: "6.1")
    assert not fp16_wanted("auto", cuda, capability=lambda _: "")
    assert not fp16_wanted("auto", ["TensorrtExecutionProvider", *cuda], capability=lambda _: "9.0")
    assert not fp16_wanted("auto", CPU, capability=lambda _: "9.0")
    assert fp16_wanted("on", CPU) and not fp16_wanted("off", cuda, capability=lambda _: "9.0")


# -- the CUDA arena cap ----------------------------------------------------------------------------
def test_cuda_mem_limit_caps_the_arena_and_grows_it_only_as_requested(tmp_path):
    gpu = Settings.from_env({"CUDA_MEM_LIMIT_MB": "4096"}).gpu
    cuda, cpu = provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"], tmp_path, gpu)
    assert cuda["gpu_mem_limit"] == str(4096 * 1024 * 1024)
    assert cuda["arena_extend_strategy"] == "kSameAsRequested" and cpu == {}
    uncapped = provider_options(["CUDAExecutionProvider"], tmp_path, GpuSettings())[0]
    assert "gpu_mem_limit" not in uncapped
