"""The detector's prepared graph takes the letterboxed canvas as uint8 (pipeline/pixel_input.py): the same
faces as the published graph on real photographs, batching kept, refused with the reason where the graph's
input is not an image the rewrite can take, and OPTIMISED_GRAPHS=0 still detecting on the float blob.

The real SCRFD and photographs come from ../shared (skipped when missing).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from pipeline import ModelBundle, Settings, load_models
from pipeline.artefacts import GraphRecipe, build_optimised, graph_notes, optimised_path
from pipeline.batching import MicroBatcher
from pipeline.faces import Face
from pipeline.loader import role_recipe, role_recipes
from pipeline.manifest import ModelEntry
from pipeline.models import ScrfdDetector
from pipeline.pixel_input import PIXEL_INPUT, PIXEL_TOLERANCE, PixelFormat, pixels_match, with_pixel_input

from .conftest import RowCounter, shared_file

CPU = ["CPUExecutionProvider"]
PHOTOS = ("biden.jpg", "obama.jpg", "two_people.jpg", "solvay_conference_1927.png")
SCRFD_PIXELS = ScrfdDetector.pixel_format


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model.SerializeToString(), providers=CPU)


def _photo(name: str) -> np.ndarray:
    return cv2.imread(str(shared_file("images", name)))


def _same_faces(got: list[Face], want: list[Face]) -> None:
    """The same faces: boxes and keypoints within 0.01 px, scores within 1e-4."""
    assert len(got) == len(want) and want
    for a, b in zip(got, want, strict=True):
        assert np.abs(a.bbox - b.bbox).max() <= 0.01, (a.bbox, b.bbox)
        assert np.abs(a.kps - b.kps).max() <= 0.01, (a.kps, b.kps)
        assert abs(a.score - b.score) <= 1e-4


def _settings(model_root: Path, cache: Path, **env: str) -> Settings:
    return Settings.from_env({"MODEL_PATH": str(model_root), "CACHE_PATH": str(cache), "EXECUTION_PROVIDERS": "cpu", **env})


@pytest.fixture(scope="module")
def prepared_settings(model_root, tmp_path_factory) -> Settings:
    return _settings(model_root, tmp_path_factory.mktemp("pixel-cache"))


@pytest.fixture(scope="module")
def prepared(prepared_settings) -> ModelBundle:
    return load_models(prepared_settings)


@pytest.fixture(scope="module")
def merging(model_root, tmp_path_factory) -> ModelBundle:
    """Runs merged across requests (BATCH_WAIT_MS > 0): only then does the detector's graph get a batch axis."""
    return load_models(_settings(model_root, tmp_path_factory.mktemp("merging-cache"), BATCH_WAIT_MS="2"))


@pytest.fixture(scope="module")
def published(model_root, tmp_path_factory) -> ModelBundle:
    return load_models(_settings(model_root, tmp_path_factory.mktemp("published-cache"), OPTIMISED_GRAPHS="0"))


def _detector(bundle: ModelBundle) -> ScrfdDetector:
    detector = bundle.models["detector"]
    assert isinstance(detector, ScrfdDetector)
    return detector


# -- the served detector ---------------------------------------------------------------------------
def test_the_prepared_detector_takes_uint8_and_finds_the_faces_of_the_published_graph(prepared, prepared_settings,
                                                                                      published):
    detector, reference = _detector(prepared), _detector(published)
    inputs = detector.session.get_inputs()
    assert [(i.name, i.type, i.shape[1:]) for i in inputs] == [(PIXEL_INPUT, "tensor(uint8)", [640, 640, 3])]
    assert detector.takes_pixels
    entry = prepared.model_set.models["detector"]
    graph = optimised_path(entry, prepared.providers, prepared_settings.resolved_cache_path(),
                           role_recipes(prepared.model_set, prepared_settings, prepared.providers)["detector"])
    notes = graph_notes(graph)  # what the build kept and how close its probe came, beside the graph
    assert notes["pixels"] is True and notes["pixels_error"] <= PIXEL_TOLERANCE
    for name in PHOTOS:
        image = _photo(name)
        _same_faces(detector.detect(image), reference.detect(image))


def test_optimised_graphs_0_feeds_the_float_blob_and_still_detects(published):
    detector = _detector(published)
    assert detector.session.get_inputs()[0].type == "tensor(float)" and not detector.takes_pixels
    assert len(detector.detect(_photo("solvay_conference_1927.png"))) >= 25
    assert len(detector.detect(_photo("two_people.jpg"))) == 2


def test_by_default_the_detector_keeps_batch_1_and_the_swapper_gets_the_batch_axis(prepared):
    """A detector run holds one request's frame, so without merging across requests (BATCH_WAIT_MS 0, the
    default) its graph stays at batch 1, which ran faster (models/base.py); the faces of a frame still
    share the swapper's and recognizer's runs."""
    assert _detector(prepared).session.get_inputs()[0].shape[0] == 1
    for role in ("recognizer", "swapper"):
        assert prepared.models[role].session.get_inputs()[0].shape[0] == "batch", role


def test_the_recipe_of_a_role_follows_its_kind_merging_and_model_fp16(prepared):
    wanted = GraphRecipe(batch=True, fp16=True)
    detector, swapper = (prepared.model_set.models[role] for role in ("detector", "swapper"))
    auto, merged_on = Settings.from_env({}), Settings.from_env({"BATCH_WAIT_MS": "2", "MODEL_FP16": "on"})
    by_default, merging_fp16_on = role_recipe(wanted, detector, auto), role_recipe(wanted, detector, merged_on)
    assert (by_default.batch, by_default.fp16) == (False, False)
    assert (merging_fp16_on.batch, merging_fp16_on.fp16) == (True, True)
    assert role_recipe(wanted, swapper, auto) == wanted
    assert role_recipe(GraphRecipe(batch=False), detector, merged_on).batch is False  # BATCH_MAX=1 stays as published


def test_two_frames_in_one_run_of_the_uint8_graph_equal_two_single_runs(merging):
    detector = _detector(merging)
    assert detector.session.get_inputs()[0].shape[0] == "batch"  # merging on: the free batch axis kept
    canvases = np.stack([detector.letterbox(_photo(name))[0] for name in ("biden.jpg", "two_people.jpg")])
    together = detector.session.run(None, {PIXEL_INPUT: canvases})
    for row in range(2):
        alone = detector.session.run(None, {PIXEL_INPUT: canvases[row:row + 1]})
        for got, want in zip(together, alone, strict=True):
            np.testing.assert_allclose(got[row:row + 1], want, rtol=1e-4, atol=1e-5)


def test_concurrent_detections_merge_into_one_run_of_the_uint8_graph(merging):
    """Three callers at once: the first runs alone (the session was idle), the other two share a run, and
    each gets the faces of its own photo; the micro-batcher's warm-up feeds the uint8 input too."""
    plain = _detector(merging)
    plain = ScrfdDetector(getattr(plain.session, "session", plain.session))  # the runtime's, not the batcher
    slow = RowCounter(plain.session, delay_s=0.5)  # the others reach the batcher while the first runs
    batcher = MicroBatcher(slow, wait_ms=2000, max_size=4)
    assert batcher.warm() == [1, 2, 4] and slow.rows == [1, 2, 4]
    slow.rows.clear()
    detector = ScrfdDetector(batcher)
    names = ("biden.jpg", "obama.jpg", "two_people.jpg")
    barrier, results = threading.Barrier(3), {}

    def detect(name: str) -> None:
        barrier.wait()
        results[name] = detector.detect(_photo(name))

    threads = [threading.Thread(target=detect, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(slow.rows) == [1, 2]  # one run of one frame, one of two
    for name in names:
        _same_faces(results[name], plain.detect(_photo(name)))


# -- preparing the graph ---------------------------------------------------------------------------
def _entry(path: Path, kind: str = "scrfd") -> ModelEntry:
    return ModelEntry(role="detector", path=path, sha256=f"{path.name}-{path.stat().st_size}", kind=kind,
                      category="detector", input_size=(640, 640))


def test_the_pixel_input_goes_in_front_of_the_batch_axis_and_the_fp16_graph(tmp_path):
    """fp16 keeps float32 inputs, so the uint8 input is put in front of the converted graph."""
    entry = _entry(shared_file("models", "scrfd_2.5g_bnkps.onnx"))
    graph = build_optimised(entry, CPU, tmp_path / "cache", GraphRecipe(fp16=True))
    notes = graph_notes(graph)
    assert notes["batch"] is True and notes["fp16"] is True and notes["pixels"] is True
    assert [(i.type, i.shape) for i in _session(graph).get_inputs()] == [("tensor(uint8)", ["batch", 640, 640, 3])]
    floats = build_optimised(entry, CPU, tmp_path / "cache", GraphRecipe(fp16=True, pixels=False))
    assert floats.parent != graph.parent  # another recipe, another artefact
    assert _session(floats).get_inputs()[0].type == "tensor(float)" and graph_notes(floats)["pixels"] is False


def _grey_model() -> onnx.ModelProto:
    """A one-channel NCHW float image in, its mean out."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0)], "grey",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 64, 64])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_graph_whose_input_is_not_a_3_channel_image_keeps_its_float_input_and_the_notes_say_why(tmp_path):
    path = tmp_path / "grey.onnx"
    onnx.save(_grey_model(), str(path))
    graph = build_optimised(_entry(path), CPU, tmp_path / "cache", GraphRecipe(batch=False))
    notes = graph_notes(graph)
    assert notes["pixels"] is False and notes["pixels_why"] == "input image is [1, 1, 64, 64], not a 3-channel NCHW image"
    assert _session(graph).get_inputs()[0].type == "tensor(float)"


def test_the_probe_refuses_a_rewrite_that_differs_from_the_blob():
    """The rewrite built without the BGR->RGB swap, probed against SCRFD's blob (which swaps): refused
    with the output and the error; the right rewrite agrees exactly."""
    model = onnx.load(str(shared_file("models", "scrfd_2.5g_bnkps.onnx")))
    floats = _session(model)
    wrong, _ = with_pixel_input(model, PixelFormat(mean=SCRFD_PIXELS.mean, std=SCRFD_PIXELS.std, rgb=False))
    ok, why, error = pixels_match(floats, _session(wrong), SCRFD_PIXELS, (640, 640))
    assert not ok and error > 0.1 and "differs from the float graph" in why
    right, _ = with_pixel_input(model, SCRFD_PIXELS)
    assert pixels_match(floats, _session(right), SCRFD_PIXELS, (640, 640)) == (True, "", 0.0)


def test_a_per_channel_normalisation_equals_opencvs_blob_and_keeps_a_named_batch_axis():
    """ImageNet's per-channel mean (in the model's RGB order) and std, through an identity graph."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 48, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 48, 64])])
    fmt = PixelFormat(mean=(123.675, 116.28, 103.53), std=58.4)
    rewritten, why = with_pixel_input(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), fmt)
    assert rewritten is not None, why
    session = _session(rewritten)
    assert session.get_inputs()[0].shape == ["batch", 48, 64, 3]
    images = np.random.default_rng(3).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    got = session.run(None, {PIXEL_INPUT: images})[0]
    np.testing.assert_array_equal(got, fmt.blob(images))
    red = (images[0, 5, 7, 2] - 123.675) / 58.4  # channel 0 of the model is OpenCV's red (BGR index 2)
    assert got[0, 0, 5, 7] == pytest.approx(red, abs=1e-5)


def test_the_detect_input_bench_writes_its_rows_and_the_faces_agree(tmp_path):
    """`python -m bench.detect_input --json` (a step of bench/gpu_machine.sh): on the H200 its JSON failed
    on numpy's float32 after the table had printed; the two graphs must find the same face."""
    shared_file("models", "scrfd_2.5g_bnkps.onnx")
    from bench import detect_input

    out = tmp_path / "detect.json"
    detect_input.main(["--reps", "2", "--rounds", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["faces"] == [1, 1]
    assert result["max_diff_px"] <= 0.01
    assert [row[0] for row in result["rows"]] == ["float input (blobFromImage)", "uint8 input (in the graph)"]
    assert result["rows"][1][3] < result["rows"][0][3] / 3  # the uint8 feed is a quarter of the float blob
