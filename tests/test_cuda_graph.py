"""CUDA graphs (pipeline/cuda_graph.py, CUDA_GRAPHS): captured shapes replay through bound buffers on one
thread, everything else runs as before, a capture that does not reproduce an ordinary run never serves,
and the setting says what it did.

The capture itself needs a GPU. Here the same wrapper runs on the CPU provider (`device="cpu"`): the
binding, the copies in and out, the hand-over to the graph thread and the choice between replay and
ordinary run are the code that serves on CUDA; only the provider option differs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
from onnx import TensorProto, helper

from pipeline import FuseOptions, Settings, load_fuser
from pipeline.config import ConfigError
from pipeline.cuda_graph import GraphedSession, other_feeds
from warmup import Warmup

from .conftest import RowCounter, insightface_image, shared_file
from .server import FunctionServer


def _graphed(session: ort.InferenceSession) -> GraphedSession:
    return GraphedSession(session, device="cpu", ordinary=lambda: session)


def _feeds(session, rows: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """`rows` rows for every input of `session` (the swapper stand-in's): uniform in -1..1 from `rng`,
    else zeros."""
    return {i.name: (rng.uniform(-1, 1, [rows, *i.shape[1:]]) if rng is not None else np.zeros([rows, *i.shape[1:]]))
            .astype(np.float32) for i in session.get_inputs()}


def _skip_without_batch_axis(session) -> None:
    if isinstance(session.get_inputs()[0].shape[0], int):
        pytest.skip("this stand-in swapper has no batch axis")


def _env(settings: Settings, tmp_path: Path, **extra: str) -> Settings:
    """The test model set with a cache of this test's own, and `extra` settings."""
    return Settings.from_env({"MODEL_PATH": str(settings.model_path), "CACHE_PATH": str(tmp_path / "c"), **extra})


def _faces(faces) -> list[tuple]:
    return [(tuple(np.round(f.bbox, 3)), round(f.score, 5), tuple(np.round(f.kps.ravel(), 3))) for f in faces]


def test_a_captured_detector_finds_the_same_faces_as_the_plain_one(fuser):
    plain = fuser.detector
    graphed = _graphed(plain.session)
    detector = type(plain)(graphed)
    images = [cv2.imread(str(insightface_image(name))) for name in ("t1.jpg", "mask_white.jpg")]
    before = _faces(detector.detect(images[0]))  # an ordinary run: the shape the capture will take
    assert graphed.captured == 0 and graphed.replays == 0
    assert graphed.capture() == "on (1 shape)"
    for image in images:
        assert _faces(detector.detect(image)) == _faces(plain.detect(image))
    assert graphed.replays == 2
    assert _faces(detector.detect(images[0])) == before


def test_concurrent_callers_each_get_their_own_image_s_faces(fuser):
    """The bound buffers are one per shape: callers from many threads must not see each other's frames."""
    plain = fuser.detector
    graphed = _graphed(plain.session)
    detector = type(plain)(graphed)
    image = cv2.imread(str(insightface_image("t1.jpg")))
    detector.detect(image)
    graphed.capture()
    # the same photograph cut at different places: each has its own faces
    crops = [image[:, : image.shape[1] * (k + 3) // 10] for k in range(8)]
    expected = [_faces(plain.detect(crop)) for crop in crops]
    assert len({str(e) for e in expected}) > 3  # the crops differ, so a mix-up would show
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            got = list(pool.map(lambda crop: _faces(detector.detect(crop)), crops))
            assert got == expected
    assert graphed.replays == 3 * len(crops)


class _CountingBinding:
    """An IOBinding that counts its device-wide waits and passes everything else on."""

    def __init__(self, binding, waits: list[int]) -> None:
        self._binding, self._waits = binding, waits

    def synchronize_inputs(self) -> None:
        self._waits.append(1)
        self._binding.synchronize_inputs()

    def __getattr__(self, name: str):
        return getattr(self._binding, name)


def test_a_replay_waits_for_the_whole_device_only_when_asked(fuser):
    """The binding's synchronize_inputs waits for every run of the process while holding the GIL (the H200
    run: a graph role slowed the whole worker under load); the runtime's copy of the feeds already ends
    with a sync of its own, so replays skip it unless `sync_inputs` is set, with the same faces."""
    plain = fuser.detector
    graphed = _graphed(plain.session)
    detector = type(plain)(graphed)
    image = cv2.imread(str(insightface_image("t1.jpg")))
    want = _faces(detector.detect(image))
    graphed.capture()
    waits: list[int] = []
    for graph in graphed._graphs.values():
        graph.binding = _CountingBinding(graph.binding, waits)
    assert _faces(detector.detect(image)) == want and waits == [] and graphed.replays == 1
    graphed.sync_inputs = True
    assert _faces(detector.detect(image)) == want and waits == [1] and graphed.replays == 2


def test_a_shape_that_was_not_captured_runs_as_before(fuser):
    swapper = fuser.swapper
    graphed = _graphed(swapper.session)
    rng = np.random.default_rng(3)
    feeds_one = _feeds(swapper.session, 1, rng)
    graphed.run(None, feeds_one)
    assert graphed.capture() == "on (1 shape)"
    feeds_two = {name: np.concatenate([value, value[:, ::-1] * 0.5]) for name, value in feeds_one.items()}
    _skip_without_batch_axis(swapper.session)
    got = graphed.run(None, feeds_two)
    assert graphed.replays == 0  # an ordinary run, not a replay of the one-row graph
    np.testing.assert_allclose(got[0], swapper.session.run(None, feeds_two)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graphed.run(None, feeds_one)[0], swapper.session.run(None, feeds_one)[0],
                               rtol=1e-5, atol=1e-5)
    assert graphed.replays == 1


def _noisy_model(path: Path) -> Path:
    """A model whose output changes from run to run (it adds random noise): no replay can match it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("RandomUniformLike", ["x"], ["noise"], low=0.0, high=1.0),
             helper.make_node("Add", ["x", "noise"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "noisy", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_a_capture_whose_replay_differs_from_an_ordinary_run_never_serves(tmp_path):
    """The capture's session is thrown away for an ordinary one, which then runs from the callers' threads."""
    path = str(_noisy_model(tmp_path / "noisy.onnx"))
    ordinary: list[ort.InferenceSession] = []

    def make_ordinary() -> ort.InferenceSession:
        ordinary.append(ort.InferenceSession(path, providers=["CPUExecutionProvider"]))
        return ordinary[-1]

    graphed = GraphedSession(ort.InferenceSession(path, providers=["CPUExecutionProvider"]), device="cpu",
                             ordinary=make_ordinary)
    graphed.run(None, {"x": np.zeros((1, 4), np.float32)})
    state = graphed.capture()
    assert state.startswith("off: capture failed") and "differs from an ordinary run" in state
    assert graphed.captured == 0 and len(ordinary) == 1 and graphed.session is ordinary[0]
    out = graphed.run(None, {"x": np.full((1, 4), 10, np.float32)})[0]
    assert out.shape == (1, 4) and np.all((out >= 10) & (out <= 11))
    assert graphed.replays == 0
    assert graphed.capture() == state  # nothing to capture again


def test_every_run_of_a_graph_session_is_made_by_its_one_thread(fuser):
    """The runtime keeps a graph in the capturing thread's context and reuses its scratch memory on the
    session's one stream: every run of the graph session goes through the wrapper's thread. Shapes not
    captured run on the second, ordinary session from the callers' threads, beside the replays."""
    recorder = RowCounter(fuser.swapper.session)
    beside = RowCounter(fuser.swapper.session)
    graphed = GraphedSession(recorder, device="cpu", ordinary=lambda: beside)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    _skip_without_batch_axis(fuser.swapper.session)

    def feeds(rows: int) -> dict[str, np.ndarray]:
        return _feeds(fuser.swapper.session, rows, rng)

    graphed.run(None, feeds(1))
    graphed.capture()
    assert not graphed.others_ready.is_set()  # made only once no capture can still be running
    graphed.make_others()
    assert beside.rows == [1]  # its first run, with the captured feeds, before any request's
    beside.rows.clear()
    beside.threads.clear()
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="caller") as pool:
        list(pool.map(lambda k: graphed.run(None, feeds(1 + k % 2)), range(12)))
    assert graphed.replays == 6
    assert recorder.threads and all(name.startswith("cuda-graph") for name in recorder.threads), recorder.threads
    assert beside.rows == [2] * 6 and beside.threads and all(name.startswith("caller") for name in beside.threads)
    # ordinary runs neither capture nor replay (without an id the runtime would capture graph 0); replays
    # name their graph, from 1 (0 is the runtime's own)
    assert recorder.graph_ids == {"run": {"-1"}, "bound": {"1"}}
    with pytest.raises(AttributeError, match="runs through run"):
        graphed.run_with_iobinding  # noqa: B018 - would run without a graph id, capturing graph 0


def test_the_second_session_comes_from_its_own_maker(fuser):
    """The loader gives the second session a maker that never rebuilds the graph file (a device out of
    memory while serving is no damaged file); the ordinary maker stays for a capture that fails."""
    session = fuser.swapper.session
    made: list[str] = []

    def maker(name: str):
        return lambda: made.append(name) or session

    graphed = GraphedSession(session, device="cpu", ordinary=maker("ordinary"), second=maker("second"))
    graphed.run(None, _feeds(session, 1))
    assert graphed.capture() == "on (1 shape)"
    graphed.make_others()
    graphed.make_others()  # a second call finds it made
    assert made == ["second"] and graphed.others_made


def test_without_the_second_session_other_shapes_still_run_on_the_graph_thread(fuser):
    """Where the second session cannot be made (the device out of memory, say), shapes not captured run on
    the graph session's thread, marked to neither capture nor replay, with the plain session's outputs."""
    swapper = fuser.swapper.session
    recorder = RowCounter(swapper)

    def cannot():
        raise RuntimeError("out of memory")

    graphed = GraphedSession(recorder, device="cpu", ordinary=cannot)  # type: ignore[arg-type]
    _skip_without_batch_axis(swapper)
    rng = np.random.default_rng(9)
    one, three = _feeds(swapper, 1, rng), _feeds(swapper, 3, rng)
    graphed.run(None, one)
    assert graphed.capture() == "on (1 shape)"
    graphed.make_others()
    assert graphed.others_ready.is_set() and not graphed.others_made
    recorder.threads.clear()
    np.testing.assert_allclose(graphed.run(None, three)[0], swapper.run(None, three)[0], rtol=1e-5, atol=1e-5)
    assert recorder.rows[-1] == 3 and all(name.startswith("cuda-graph") for name in recorder.threads)


def test_a_capture_without_runs_says_why(fuser):
    graphed = _graphed(fuser.detector.session)
    assert graphed.capture().startswith("off: no run to capture")


@pytest.fixture
def graphs_on_the_cpu(monkeypatch):
    """The loader as on a GPU, where the runtime accepts CUDA graphs, with the buffers on the CPU: every
    role CUDA_GRAPHS names gets a GraphedSession, captured by the warm-up."""
    import pipeline.loader as loader

    original = loader._role_session

    def accepting(*args):
        session, why = original(*args[:-1], None)
        return session, (None if args[-1] is not None else why)

    monkeypatch.setattr(loader, "_role_session", accepting)
    monkeypatch.setattr(loader, "GRAPH_DEVICE", "cpu")


def _warm(settings: Settings, exercise: bool = True) -> Warmup:
    warm = Warmup(settings=settings, exercise=exercise)
    warm.ensure_started()
    assert warm.readiness.ready_event.wait(120)
    return warm


def test_a_fusion_through_captured_models_is_the_fusion_without_them(settings, tmp_path, graphs_on_the_cpu):
    """The warm-up's exercise runs the shapes a one-face request runs, so after the capture such a request
    replays every model, and its answer (on the CPU provider) is byte for byte the one without graphs;
    micro-batching (BATCH_WAIT_MS) wraps the graph session and keeps its captures."""
    warm = _warm(_env(settings, tmp_path, CUDA_GRAPHS="all", BATCH_WAIT_MS="1"))
    assert warm.readiness.state == "ready", warm.readiness.reason
    roles = ("detector", "recognizer", "swapper", "enhancer")
    assert warm.readiness.as_dict()["cuda_graphs"] == {role: "on (1 shape)" for role in roles}
    assert "cuda_graphs" in warm.readiness.timings_s
    bundle = warm.fuser.models
    assert bundle.batchers  # some roles micro-batched, around their graph sessions
    source, target = (shared_file("images", n).read_bytes() for n in ("obama.jpg", "biden.jpg"))
    options = FuseOptions(output_format="png")
    got = warm.fuser.fuse_bytes(source, target, options)
    # without graphs, with the same graphs prepared (merging on gives the detector its batch axis)
    without = load_fuser(_env(settings, tmp_path, BATCH_WAIT_MS="1"))
    assert got.data == without.fuse_bytes(source, target, options).data
    replayed = {role: session.replays for role, session in bundle.graphed.items()}
    assert replayed["detector"] >= 2 and replayed["recognizer"] >= 1 and replayed["swapper"] >= 1, replayed
    # after the captures, each role's second session for the shapes it does not replay, in the background
    assert all(session.others_ready.wait(30) and session.others_made for session in bundle.graphed.values())
    assert warm.fuser.fuse_bytes(source, target, options).data == got.data


def test_with_the_exercise_off_nothing_is_captured_and_ordinary_sessions_serve(settings, tmp_path, graphs_on_the_cpu):
    warm = _warm(_env(settings, tmp_path, CUDA_GRAPHS="detector"), exercise=False)
    assert warm.readiness.state == "ready", warm.readiness.reason
    assert warm.readiness.cuda_graphs == {"detector": "off: no run to capture (the warm-up's exercise is off)"}
    graphed = warm.fuser.models.graphed["detector"]
    image = cv2.imread(str(insightface_image("t1.jpg")))
    assert len(warm.fuser.detector.detect(image)) > 0
    assert graphed.replays == 0 and graphed._seen == {}  # stepped aside: no request's pixels are kept


def test_cuda_graphs_on_the_cpu_are_reported_off_and_the_function_serves(model_root, tmp_path):
    server = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"),
                             "CUDA_GRAPHS": "detector,swapper"})
    try:
        ready = requests.get(server.url + "/readyz", timeout=5).json()
        assert set(ready["cuda_graphs"]) == {"detector", "swapper"}
        assert all(state.startswith("off: CUDA graphs are made by the CUDA provider") and "CPUExecutionProvider" in state
                   for state in ready["cuda_graphs"].values())
        text = requests.get(server.url + "/metrics", timeout=5).text
        assert 'facefusion_model_cuda_graph{role="detector"} 0.0' in text
        source, target = (shared_file("images", n).read_bytes() for n in ("obama.jpg", "biden.jpg"))
        answer = requests.post(server.url, files={"source": source, "target": target}, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    finally:
        server.stop()


def test_unset_cuda_graphs_add_nothing_to_the_bundle(fuser):
    assert fuser.models.cuda_graphs == {} and fuser.models.graphed == {}


def test_other_feeds_differ_from_the_warm_up_s_flat_frame():
    """The capture's second check must feed other values, also where the warm-up fed a flat grey frame."""
    flat = {"pixels": np.full((1, 640, 640, 3), 127, np.uint8), "blob": np.zeros((1, 3, 112, 112), np.float32),
            "weight": np.ones((1,), np.float64)}
    other = other_feeds(flat)
    for name, value in flat.items():
        assert other[name].shape == value.shape and other[name].dtype == value.dtype
        assert np.mean(other[name] != value) > 0.9


@pytest.mark.parametrize("value, roles", [("", ()), ("off", ()), ("none", ()), ("all", ("all",)),
                                          ("Detector, swapper", ("detector", "swapper"))])
def test_the_setting_reads_roles_all_or_off(value, roles):
    assert Settings.from_env({"CUDA_GRAPHS": value}).gpu.cuda_graphs == roles


def test_all_beside_role_names_is_refused():
    with pytest.raises(ConfigError, match="CUDA_GRAPHS is either all or a list of roles"):
        Settings.from_env({"CUDA_GRAPHS": "all,detector"})


def test_a_role_the_model_set_lacks_keeps_the_pod_not_ready_and_names_it(model_root, tmp_path):
    settings = Settings.from_env({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"),
                                  "CUDA_GRAPHS": "detector,upscaler"})
    with pytest.raises(ConfigError, match="CUDA_GRAPHS names upscaler"):
        load_fuser(settings)
    warm = _warm(settings, exercise=False)
    assert warm.readiness.state == "failed" and "upscaler" in warm.readiness.reason
