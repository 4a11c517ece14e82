"""The swapper family: each kind's pre- and post-processing as FaceFusion has it, several sources
averaged, swapper_weight, and the choice of swapper over real HTTP, events and the CLI.

The facts restated in `FACEFUSION` are FaceFusion's `create_static_model_set` entries
(facefusion/processors/modules/face_swapper/core.py) and its `WARP_TEMPLATE_SET`
(facefusion/face_helper.py); the tests check that our kinds act on them, through the real runtime.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from PIL import Image

from devtools.standins import identity_swapper_model, write_test_models
from devtools.swapper_standins import SWAPPER_KINDS, converter_model, swapper_model
from function import events
from pipeline import (
    FuseOptions,
    InvalidOptions,
    ModelSetInvalid,
    Settings,
    StageTimer,
    load_fuser,
    parse_manifest,
)
from pipeline.boost import implode
from pipeline.faces import Face
from pipeline.identity import SourceIdentity, balance
from pipeline.models import KINDS, EmbeddingConverter, FaceSwapper, InSwapper
from pipeline.sources import MAX_SOURCES

from .conftest import REPO, shared_file
from .server import FunctionServer

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
# kind: (template, size, (mean, standard deviation), output range)
FACEFUSION = {
    "inswapper": ("arcface_128", 128, UNIT, (0.0, 1.0)),
    "hyperswap": ("arcface_128", 256, HALF, (-1.0, 1.0)),
    "simswap": ("arcface_112_v1", 256, IMAGENET, (0.0, 1.0)),
    "simswap_unofficial": ("arcface_112_v1", 512, UNIT, (0.0, 1.0)),
    "ghost": ("arcface_112_v1", 256, HALF, (-1.0, 1.0)),
    "blendswap": ("ffhq_512", 256, UNIT, (0.0, 1.0)),
    "uniface": ("ffhq_512", 256, HALF, (-1.0, 1.0)),
}
TEMPLATES = {  # FaceFusion's WARP_TEMPLATE_SET, in units of the crop size
    "arcface_112_v1": [[0.35473214, 0.45658929], [0.64526786, 0.45658929], [0.50000000, 0.61154464],
                       [0.37913393, 0.77687500], [0.62086607, 0.77687500]],
    "arcface_112_v2": [[0.34191607, 0.46157411], [0.65653393, 0.45983393], [0.50022500, 0.64050536],
                       [0.37097589, 0.82469196], [0.63151696, 0.82325089]],
    "arcface_128": [[0.36167656, 0.40387734], [0.63696719, 0.40235469], [0.50019687, 0.56044219],
                    [0.38710391, 0.72160547], [0.61507734, 0.72034453]],
    "ffhq_512": [[0.37691676, 0.46864664], [0.62285697, 0.46912813], [0.50123859, 0.61331904],
                 [0.39308822, 0.72541100], [0.61150205, 0.72490465]],
}
ALL_KINDS = ("inswapper", *SWAPPER_KINDS)


def _session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _swapper(kind: str, behaviour: str = "identity", batch: bool = False) -> FaceSwapper:
    """A kind's class around its stand-in (inswapper: the identity stand-in with an identity emap)."""
    if kind == "inswapper":
        model = identity_swapper_model(batch=batch)
        return InSwapper(_session(model), np.eye(512, dtype=np.float32))
    swapper = KINDS[kind](_session(swapper_model(kind, behaviour, batch)))
    assert isinstance(swapper, FaceSwapper)
    if swapper.needs_converter:
        swapper.converter = EmbeddingConverter(_session(converter_model()))
    return swapper


def _identity(seed: int = 0, image: np.ndarray | None = None, face: Face | None = None) -> SourceIdentity:
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal(512).astype(np.float32) * 20
    image = image if image is not None else np.zeros((64, 64, 3), np.uint8)
    face = face or Face(bbox=np.array([0, 0, 64, 64], np.float32), score=1.0,
                        kps=np.array([[20, 24], [44, 24], [32, 34], [22, 46], [42, 46]], np.float32))
    return SourceIdentity.average([(face, raw, image)])


# -- each kind's facts -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_alignment_puts_the_landmarks_on_the_kinds_template_at_every_boost(kind):
    template, size, _, _ = FACEFUSION[kind]
    swapper = _swapper(kind)
    assert swapper.input_size == size
    where = np.asarray(TEMPLATES[template]) * size
    angle = np.deg2rad(17)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = (where @ rotation.T) * 1.7 + [300, 120]  # the template, turned, scaled and moved into a frame
    face = Face(bbox=np.array([0, 0, 1, 1], np.float32), score=1.0, kps=kps.astype(np.float32))
    image = np.zeros((1000, 1000, 3), np.uint8)
    for boost in (1, 2):
        aligned, matrix = swapper.align(image, face, boost)
        assert aligned.shape == (size * boost, size * boost, 3)
        landed = np.c_[kps, np.ones(5)] @ matrix.T
        np.testing.assert_allclose(landed, where * boost, atol=1e-3)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_target_crop_goes_in_with_the_kinds_mean_and_deviation_as_rgb(kind):
    _, size, (mean, std), _ = FACEFUSION[kind]
    swapper = _swapper(kind)
    crops = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    blob = swapper.normalise(crops)
    rgb = crops[..., ::-1] / 255.0
    expected = ((rgb - np.asarray(mean)) / np.asarray(std)).transpose(0, 3, 1, 2)
    assert blob.shape == (2, 3, size, size) and blob.dtype == np.float32
    np.testing.assert_allclose(blob, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_output_range_maps_onto_0_to_255_as_bgr(kind):
    _, size, _, (low, high) = FACEFUSION[kind]
    swapper = _swapper(kind)
    pred = np.full((1, 3, size, size), low, np.float32)
    pred[0, 0] = high  # red in the graph's RGB: the last channel of BGR
    out = swapper.denormalise(pred)
    assert out.shape == (1, size, size, 3) and out.dtype == np.uint8
    assert (out[0, ..., 2] == 255).all() and (out[0, ..., :2] == 0).all()
    assert (swapper.denormalise(pred * 3 - 1)[0, ..., :2] == 0).all()  # beyond the range: clipped


@pytest.mark.parametrize("boost", [1, 2, 4])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_an_identity_standin_gives_back_exactly_its_crop_through_the_kinds_processing(kind, boost):
    """Through normalise, the ONNX runtime, denormalise and the pixel-boost tiles: crop out == crop in."""
    swapper = _swapper(kind)
    size = swapper.input_size * boost
    crop = np.random.default_rng(boost).integers(0, 256, (size, size, 3), dtype=np.uint8)
    source = swapper.prepare_source(_identity())
    assert np.array_equal(swapper.swap_crop(crop, source, boost), crop)


def test_a_256_swapper_runs_the_interleaved_tiles_in_facefusions_order():
    """Tile i*k + j of a 512 boost on hyperswap is crop[i::2, j::2]: a stand-in that tints by the tile's
    own content proves the swapped tiles come back to the pixels they were cut from."""
    swapper = _swapper("hyperswap", "tint")
    crop = np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    source = swapper.prepare_source(_identity())
    tiles = implode(crop, 2)
    assert all(np.array_equal(tiles[i * 2 + j], crop[i::2, j::2]) for i in range(2) for j in range(2))
    boosted = swapper.swap_crop(crop, source, 2)
    for i in range(2):
        for j in range(2):
            assert np.array_equal(boosted[i::2, j::2], swapper.swap_aligned(tiles[i * 2 + j][None], source)[0])


def test_an_fp16_file_with_float16_inputs_gets_float16_blobs():
    """inswapper_128_fp16 is the same kind as the fp32 file; a graph whose inputs are float16 is fed float16."""
    from onnx import TensorProto, helper

    model = identity_swapper_model()
    graph = model.graph
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    graph.node.insert(0, helper.make_node("Cast", ["source"], ["source32"], to=TensorProto.FLOAT))
    graph.node[1].input[0] = "source32"
    for node in graph.node[2:]:
        node.input[:] = ["target32" if name == "target" else name for name in node.input]
        node.output[:] = ["output32" if name == "output" else name for name in node.output]
    graph.node.insert(0, helper.make_node("Cast", ["target"], ["target32"], to=TensorProto.FLOAT))
    graph.node.append(helper.make_node("Cast", ["output32"], ["output"], to=TensorProto.FLOAT16))
    swapper = InSwapper(_session(model), np.eye(512, dtype=np.float32))
    assert swapper.target_half and swapper.source_half
    crop = np.random.default_rng(6).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = swapper.swap_crop(crop, swapper.prepare_source(_identity()), 2)
    assert np.abs(out.astype(int) - crop.astype(int)).max() <= 1  # float16 keeps a level to within one


class _CountingSession:
    """The real session, counting its runs."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.runs = session, 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


@pytest.mark.parametrize("batch", [True, False], ids=["free-batch", "batch-of-1"])
def test_swap_crops_swaps_several_faces_in_one_run_when_the_graph_allows(batch):
    swapper = _swapper("hyperswap", "tint", batch=batch)
    counting = _CountingSession(swapper.session)
    swapper.session = counting  # type: ignore[assignment]
    rng = np.random.default_rng(4)
    crops = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(3)]
    sources = np.concatenate([swapper.prepare_source(_identity(seed)) for seed in range(3)])
    together = swapper.swap_crops(crops, sources, 2)
    assert counting.runs == (1 if batch else 12)
    for crop, row, out in zip(crops, sources, together, strict=True):  # each face with its own source row
        assert np.array_equal(out, swapper.swap_crop(crop, row[None], 2))
    assert not np.array_equal(together[0], swapper.swap_crop(crops[0], sources[1:2], 2))


# -- the source of each kind -----------------------------------------------------------------------
def _converted(raw: np.ndarray) -> np.ndarray:
    return _session(converter_model()).run(None, {"input": raw.reshape(1, 512).astype(np.float32)})[0]


def test_inswapper_projects_the_embedding_through_its_emap():
    rng = np.random.default_rng(5)
    emap = rng.standard_normal((512, 512)).astype(np.float32)
    swapper = InSwapper(_session(identity_swapper_model()), emap)
    identity = _identity()
    latent = identity.embedding @ emap
    np.testing.assert_allclose(swapper.prepare_source(identity)[0], latent / np.linalg.norm(latent), rtol=1e-4, atol=1e-6)


def test_hyperswap_takes_the_normalised_embedding():
    identity = _identity()
    expected = identity.embedding / np.linalg.norm(identity.embedding)
    np.testing.assert_allclose(_swapper("hyperswap").prepare_source(identity)[0], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["simswap", "simswap_unofficial"])
def test_simswap_converts_the_raw_embedding_and_normalises_it(kind):
    identity = _identity()
    converted = _converted(identity.embedding)[0]
    np.testing.assert_allclose(_swapper(kind).prepare_source(identity)[0], converted / np.linalg.norm(converted),
                               rtol=1e-5, atol=1e-6)


def test_ghost_converts_the_raw_embedding_and_keeps_its_scale():
    identity = _identity()
    np.testing.assert_allclose(_swapper("ghost").prepare_source(identity), _converted(identity.embedding),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "template", "size"), [("blendswap", "arcface_112_v2", 112), ("uniface", "ffhq_512", 256)])
def test_blendswap_and_uniface_take_the_source_face_cropped_on_their_template(kind, template, size):
    """A blue frame with a white dot on the source face's nose tip: the source input is RGB in 0..1 at the
    kind's source size, with the dot where the template puts the nose."""
    image = np.zeros((400, 400, 3), np.uint8)
    image[...] = (255, 0, 0)  # BGR blue
    nose = np.array([200.0, 210.0])
    kps = np.array([[170, 180], [230, 180], nose, [175, 245], [225, 245]], np.float32)
    cv2.circle(image, (200, 210), 3, (255, 255, 255), -1)
    face = Face(bbox=np.array([140, 140, 260, 280], np.float32), score=1.0, kps=kps)
    source = _swapper(kind).prepare_source(_identity(image=image, face=face))
    assert source.shape == (1, 3, size, size) and source.dtype == np.float32
    assert source.min() >= 0 and source.max() <= 1
    assert source[0, 2, 5, 5] == 1.0 and source[0, 0, 5, 5] == 0.0  # blue is RGB's last channel
    white = np.argwhere(source[0].min(axis=0) > 0.9).mean(axis=0)[::-1]  # (x, y) of the dot
    expected = np.asarray(TEMPLATES[template][2]) * size
    assert np.abs(white - expected).max() < 0.1 * size  # near the template's nose tip


def test_swapper_weight_is_facefusions_balance():
    source, target = np.ones((1, 4), np.float32), np.full((1, 4), 3.0, np.float32)
    assert np.array_equal(balance(source, target, 0.5), source)
    np.testing.assert_allclose(balance(source, target, 0.0), 0.65 * source + 0.35 * target)
    np.testing.assert_allclose(balance(source, target, 1.0), 1.35 * source - 0.35 * target)
    hyper, ghost, blend = _swapper("hyperswap"), _swapper("ghost"), _swapper("blendswap")
    raw = np.full((2, 512), 2.0, np.float32)
    src = hyper.prepare_source(_identity())
    np.testing.assert_allclose(hyper.balance_source(src, raw, 0.0), 0.65 * src + 0.35 * raw / np.linalg.norm(raw[0]),
                               rtol=1e-5)
    gsrc = ghost.prepare_source(_identity())
    np.testing.assert_allclose(ghost.balance_source(gsrc, raw, 0.0), 0.65 * gsrc + 0.35 * raw, rtol=1e-5)  # raw target
    bsrc = blend.prepare_source(_identity())
    assert blend.balance_source(bsrc, raw, 0.0) is bsrc  # a face crop is not balanced
    with pytest.raises(InvalidOptions, match="swapper_weight"):
        FuseOptions(swapper_weight=1.5)


def test_a_simswap_or_ghost_role_without_its_converter_is_refused_by_name(tmp_path):
    sha = "0" * 64
    base = {"detector": {"file": "d.onnx", "sha256": sha}, "recognizer": {"file": "r.onnx", "sha256": sha},
            "swapper": {"file": "s.onnx", "sha256": sha}}
    with pytest.raises(ModelSetInvalid, match="'ghost'.*'ghost_embedding_converter'"):
        parse_manifest({"models": {**base, "ghost": {"file": "g.onnx", "sha256": sha, "kind": "ghost"}}}, tmp_path)
    with pytest.raises(ModelSetInvalid, match="role 'swapper' \\(simswap\\).*'embedding_converter'"):
        parse_manifest({"models": {**base, "swapper": {"file": "s.onnx", "sha256": sha, "kind": "simswap"}}}, tmp_path)
    linked = parse_manifest({"models": {**base, "ghost": {"file": "g.onnx", "sha256": sha, "kind": "ghost"},
                                        "ghost_embedding_converter": {"file": "c.onnx", "sha256": sha,
                                                                      "kind": "crossface"}}}, tmp_path)
    assert linked.models["ghost_embedding_converter"].category == "embedding_converter"


# -- through the Fuser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swapper_root(tmp_path_factory, scrfd_path) -> Path:
    """The stand-in set of `make-test-models`: every swapper kind as an extra role named after it."""
    root = tmp_path_factory.mktemp("swapper-models")
    write_test_models(root, detector=scrfd_path, swappers=True)
    return root


@pytest.fixture(scope="module")
def fuser(swapper_root, tmp_path_factory):
    return load_fuser(Settings(model_path=swapper_root, cache_path=tmp_path_factory.mktemp("swapper-cache")))


def _bytes(name: str) -> bytes:
    return shared_file("images", name).read_bytes()


def _blank() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 90, 90)).save(buf, "PNG")
    return buf.getvalue()


def test_every_swapper_role_of_the_set_loads_and_serves(fuser):
    assert set(fuser.swappers) == {"swapper", *SWAPPER_KINDS}
    images = {}
    for role in fuser.swappers:
        result = fuser.fuse_bytes(_bytes("obama.jpg"), _bytes("biden.jpg"), FuseOptions(swapper=role, output_format="png"))
        assert result.report.swapper == role and result.report.faces_swapped == 1
        images[role] = result.data
    assert len(set(images.values())) == len(images)  # each kind swaps differently


@pytest.mark.parametrize(("role", "native"), [("swapper", 128), ("hyperswap", 256), ("simswap_unofficial", 512)])
def test_pixel_boost_must_be_a_multiple_of_the_chosen_swappers_size(fuser, role, native):
    for boost in (128, 256, 512, 1024):
        options = FuseOptions(swapper=role, pixel_boost=boost)
        if boost % native:
            with pytest.raises(InvalidOptions, match=f"pixel_boost must be a multiple of the swapper's size {native}"):
                fuser.check_options(options)
        else:
            assert fuser.check_options(options) == boost // native


def test_the_averaged_identity_is_the_mean_of_the_single_ones(fuser):
    """Through the Fuser's source path: hyperswap reads the mean of the normalised embeddings, ghost the
    converted mean of the raw ones (its converter stand-in is affine, so that is the mean of each
    converted), inswapper the emap projection of the raw mean."""
    a, b = _bytes("obama.jpg"), _bytes("biden.jpg")

    def prepared(sources: list[bytes], role: str) -> np.ndarray:
        return fuser.source_face([fuser.decode(s) for s in sources], StageTimer(), swapper=role)[1]

    np.testing.assert_allclose(prepared([a, b], "hyperswap"), (prepared([a], "hyperswap") + prepared([b], "hyperswap")) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(prepared([a, b], "ghost"), (prepared([a], "ghost") + prepared([b], "ghost")) / 2,
                               rtol=1e-4, atol=1e-4)
    raws = [fuser.embedder.embed_raw(img.bgr, max(fuser.detect(img), key=lambda f: f.area))
            for img in (fuser.decode(a), fuser.decode(b))]
    np.testing.assert_allclose(prepared([a, b], "swapper"), fuser.swapper.latent((raws[0] + raws[1]) / 2),  # type: ignore[attr-defined]
                               rtol=1e-4, atol=1e-6)


def test_the_source_cache_keys_on_the_whole_list_and_the_swapper(swapper_root, tmp_path):
    fuser = load_fuser(Settings(model_path=swapper_root, cache_path=tmp_path))  # an empty source cache
    a, b, target = _bytes("obama.jpg"), _bytes("biden.jpg"), _bytes("two_people.jpg")
    first = fuser.fuse_bytes([a, b], target, FuseOptions(swapper="uniface"))
    assert "embed" in first.report.timings_ms
    assert "embed" not in fuser.fuse_bytes([a, b], target, FuseOptions(swapper="uniface")).report.timings_ms
    for sources, role in (([b, a], "uniface"), ([a], "uniface"), ([a, b], "blendswap")):
        assert "embed" in fuser.fuse_bytes(sources, target, FuseOptions(swapper=role)).report.timings_ms


def test_a_source_without_a_face_is_skipped_and_reported(fuser):
    result = fuser.fuse_bytes([_blank(), _bytes("obama.jpg")], _bytes("biden.jpg"))
    assert result.report.sources_skipped == [0] and [s["source"] for s in result.report.sources] == [1]
    assert result.report.source_face == {k: v for k, v in result.report.sources[0].items() if k != "source"}


def test_swapper_weight_changes_embedding_swaps_but_not_crop_swaps(fuser):
    src, tgt = _bytes("obama.jpg"), _bytes("biden.jpg")

    def image(role: str, weight: float) -> bytes:
        return fuser.fuse_bytes(src, tgt, FuseOptions(swapper=role, swapper_weight=weight, output_format="png")).data

    assert image("hyperswap", 0.0) != image("hyperswap", 0.5) != image("hyperswap", 1.0)
    assert image("ghost", 0.0) != image("ghost", 0.5)
    assert image("blendswap", 0.0) == image("blendswap", 0.5)


# -- over HTTP, events and the CLI -----------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("swapper-store")
    (root / "faces").mkdir()
    for name in ("obama.jpg", "biden.jpg", "two_people.jpg"):
        shutil.copy(shared_file("images", name), root / "faces" / name)
    (root / "faces" / "blank.png").write_bytes(_blank())
    return root


@pytest.fixture(scope="module")
def server(swapper_root, store, tmp_path_factory):
    srv = FunctionServer({"MODEL_PATH": str(swapper_root), "CACHE_PATH": str(tmp_path_factory.mktemp("swapper-fn")),
                          "ALLOWED_URI_PREFIXES": f"file://{store}/", "ALLOWED_OUTPUT_PREFIXES": f"file://{store}/out/"})
    yield srv
    srv.stop()


def _post(server, sources: list[str], target: str = "two_people.jpg", **fields) -> requests.Response:
    files = [("source", (name, _bytes(name) if name != "blank.png" else _blank())) for name in sources]
    files.append(("target", (target, _bytes(target))))
    return requests.post(server.url + "/", files=files, data=fields, timeout=120)


def _problem(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    return r.json()


def test_the_swapper_option_picks_a_role_over_http(server):
    default = _post(server, ["obama.jpg"], format="png")
    hyper = _post(server, ["obama.jpg"], format="png", swapper="hyperswap")
    assert default.status_code == hyper.status_code == 200
    assert default.content != hyper.content
    body = _problem(_post(server, ["obama.jpg"], swapper="faceswap9000"), 400)
    assert "swapper" in body["detail"] and "hyperswap" in body["detail"]  # names the option and the roles there are
    body = _problem(_post(server, ["obama.jpg"], swapper="hyperswap", pixel_boost="128"), 400)
    assert "pixel_boost" in body["detail"] and "256" in body["detail"]
    assert _post(server, ["obama.jpg"], swapper="hyperswap", pixel_boost="512").status_code == 200
    assert "swapper_weight" in _problem(_post(server, ["obama.jpg"], swapper_weight="2"), 400)["detail"]


def test_openapi_documents_source_lists(server):
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    post = spec["paths"]["/"]["post"]["requestBody"]["content"]
    for schema in (post["multipart/form-data"]["schema"], post["application/json"]["schema"]["oneOf"][0]):
        lists = [one for one in schema["properties"]["source"]["oneOf"] if one.get("type") == "array"]
        assert lists and lists[0]["maxItems"] == MAX_SOURCES
    assert {"swapper", "swapper_weight"} <= set(post["multipart/form-data"]["schema"]["properties"])


def test_repeated_multipart_sources_are_averaged_and_reported(server, store):
    out = f"file://{store}/out/multi.jpg"
    r = _post(server, ["blank.png", "obama.jpg", "biden.jpg"], output=out, swapper="simswap")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["sources_skipped"] == [0] and [s["source"] for s in report["sources"]] == [1, 2]
    assert report["swapper"] == "simswap" and (store / "out" / "multi.jpg").is_file()
    one = _post(server, ["obama.jpg"], format="png", swapper="simswap")
    two = _post(server, ["obama.jpg", "biden.jpg"], format="png", swapper="simswap")
    assert one.content != two.content


def test_too_many_sources_or_none_with_a_face_fail_naming_source_and_write_nothing(server, store):
    out = f"file://{store}/out/refused.jpg"
    body = _problem(_post(server, ["obama.jpg"] * 9, output=out), 400)
    assert body["image"] == "source" and "8" in body["detail"]
    body = _problem(_post(server, ["blank.png", "blank.png"], output=out), 422)
    assert body["image"] == "source" and "any of the 2 source images" in body["detail"]
    files = [("source", ("a.jpg", _bytes("obama.jpg"))), ("source", ("b.jpg", b"not an image " * 20)),
             ("target", ("t.jpg", _bytes("biden.jpg")))]
    body = _problem(requests.post(server.url + "/", files=files, data={"output": out}, timeout=60), 415)
    assert body["image"] == "source" and "source image 2 of 2" in body["detail"]
    body = _problem(requests.post(server.url + "/", json={
        "source": [f"file://{store}/faces/obama.jpg"] * 9, "target": f"file://{store}/faces/biden.jpg",
        "output": out}, timeout=60), 400)
    assert body["image"] == "source"
    assert not (store / "out" / "refused.jpg").exists()


def test_a_json_array_of_sources_and_the_swapper_option(server, store):
    body = {"source": [f"file://{store}/faces/obama.jpg", f"file://{store}/faces/blank.png"],
            "target": f"file://{store}/faces/biden.jpg", "output": f"file://{store}/out/json.png",
            "options": {"swapper": "ghost", "swapper_weight": 0.8}}
    r = requests.post(server.url + "/", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["sources_skipped"] == [1] and r.json()["swapper"] == "ghost"
    assert (store / "out" / "json.png").is_file()


def test_fusion_requested_takes_a_source_array_and_the_options(server, store):
    out = store / "out" / "event.jpg"
    event = CloudEvent({"type": events.FUSION_REQUESTED, "source": "/tests"},
                       {"source": [f"file://{store}/faces/obama.jpg", f"file://{store}/faces/biden.jpg"],
                        "target": f"file://{store}/faces/two_people.jpg", "output": f"file://{out}",
                        "options": {"swapper": "uniface"}})
    headers, data = to_binary(event)
    r = requests.post(server.url + "/", data=data, headers=headers, timeout=120)
    assert r.status_code == 200, r.text  # the fusion.completed reply event
    assert out.is_file() and r.json()["output"] == f"file://{out}"
    bad = CloudEvent({"type": events.FUSION_REQUESTED, "source": "/tests"},
                     {"source": [f"file://{store}/faces/obama.jpg"], "target": f"file://{store}/faces/two_people.jpg",
                      "output": f"file://{store}/out/bad-event.jpg", "options": {"swapper": "nope"}})
    headers, data = to_binary(bad)
    r = requests.post(server.url + "/", data=data, headers=headers, timeout=60)
    assert r.status_code == 400 and "swapper" in r.json()["detail"]
    assert not (store / "out" / "bad-event.jpg").exists()


def test_the_cli_takes_several_sources_and_a_swapper(swapper_root, tmp_path):
    out = tmp_path / "cli.png"
    env = {"MODEL_PATH": str(swapper_root), "CACHE_PATH": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-m", "pipeline", "fuse", str(shared_file("images", "obama.jpg")),
            str(shared_file("images", "biden.jpg")), str(shared_file("images", "two_people.jpg")), "-o", str(out),
            "--swapper", "hyperswap", "--swapper-weight", "0.7", "--pixel-boost", "512"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["swapper"] == "hyperswap" and len(report["sources"]) == 2 and out.is_file()
    bad = subprocess.run([*args[:-6], "--swapper", "nope"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "swapper" in bad.stderr

