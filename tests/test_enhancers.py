"""The enhancer kinds: FaceFusion's pre- and post-processing per kind, the fidelity weight, the blend, the
choice of role, and their options over HTTP, events and the CLI."""

from __future__ import annotations

import os
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

from devtools.enhancer_standins import EXTRA_ENHANCER_ROLES, enhancer_standin
from devtools.standins import write_test_models
from function.fusion import parse_options
from pipeline import FuseOptions, InvalidOptions, ModelSetInvalid, Settings, load_fuser
from pipeline.faces import Face
from pipeline.manifest import ModelEntry
from pipeline.masks import MaskOptions
from pipeline.models import KINDS, FaceEnhancer
from pipeline.models.enhancer import EnhancerOptions
from pipeline.paste import paste_back
from pipeline.selection import Selection

from .conftest import REPO, RowCounter, shared_file
from .conftest import assert_bad_options as _problem
from .conftest import fuse_json as _json
from .conftest import fuse_multipart as _multipart
from .server import FunctionServer

# FaceFusion's WARP_TEMPLATES (facefusion/face_helper.py), typed in here from its source.
FFHQ_512 = np.array([[0.37691676, 0.46864664], [0.62285697, 0.46912813], [0.50123859, 0.61331904],
                     [0.39308822, 0.72541100], [0.61150205, 0.72490465]])
ARCFACE_128 = np.array([[0.36167656, 0.40387734], [0.63696719, 0.40235469], [0.50019687, 0.56044219],
                        [0.38710391, 0.72160547], [0.61507734, 0.72034453]])
# kind, size, template: FaceFusion's face_enhancer model set
KIND_FACTS = [("gfpgan", 512, FFHQ_512), ("codeformer", 512, FFHQ_512), ("restoreformer++", 512, FFHQ_512),
              ("gpen", 256, ARCFACE_128), ("gpen", 512, FFHQ_512), ("gpen", 1024, FFHQ_512)]


def _enhancer(kind: str, size: int, identity: bool = False, manifest_size: list[int] | None = None) -> FaceEnhancer:
    """The kind's class over a stand-in, built as the loader builds it (class.create with a manifest entry)."""
    model = enhancer_standin(kind, size, identity=identity)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    entry = ModelEntry(role="enhancer", path=Path(f"{kind}.onnx"), sha256="0" * 64, kind=kind, category="enhancer",
                       input_size=tuple(manifest_size) if manifest_size else None)
    return KINDS[kind].create(session, entry, Path("/nonexistent"))


# -- pre- and post-processing per kind ----------------------------------------------------------------
@pytest.mark.parametrize(("kind", "size", "template"), KIND_FACTS, ids=[f"{k}-{s}" for k, s, _ in KIND_FACTS])
def test_each_kind_aligns_on_its_template_at_its_size(kind, size, template):
    enhancer = _enhancer(kind, size)
    assert enhancer.input_size == size  # gpen: read from the file, no input_size in the manifest
    kps = (template * 300 + np.array([40.0, 65.0])).astype(np.float32)  # a face whose landmarks are the template
    face = Face(bbox=np.array([40, 65, 340, 365], np.float32), score=1.0, kps=kps)
    frame = np.random.default_rng(size).integers(0, 256, (480, 420, 3), dtype=np.uint8)
    crop, matrix = enhancer.align(frame, face)
    assert crop.shape == (size, size, 3)
    mapped = kps.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
    assert np.allclose(mapped, template * size, atol=1e-3)


@pytest.mark.parametrize(("kind", "size", "template"), KIND_FACTS, ids=[f"{k}-{s}" for k, s, _ in KIND_FACTS])
def test_an_identity_model_returns_the_crop_through_normalise_and_denormalise(kind, size, template):
    enhancer = _enhancer(kind, size, identity=True)
    crop = np.random.default_rng(7).integers(0, 256, (size, size, 3), dtype=np.uint8)
    assert np.array_equal(enhancer.restore(crop, EnhancerOptions(weight=0.0)), crop)


def test_normalisation_is_rgb_in_minus_one_to_one_and_back_clipped():
    crop = np.zeros((4, 4, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 0, 51, 255  # B, G, R
    blob = FaceEnhancer.normalise(crop)
    assert blob.shape == (1, 3, 4, 4) and blob.dtype == np.float32
    assert np.allclose(blob[0, :, 0, 0], [1.0, 51 / 255 * 2 - 1, -1.0])  # channel 0 is red
    out = np.stack([np.full((4, 4), v, np.float32) for v in (3.0, 0.0, -7.0)])[None]  # R, G, B beyond the range
    assert FaceEnhancer.denormalise(out)[0, 0].tolist() == [0, 128, 255]  # B, G, R: clipped, (0+1)/2*255 rounded


def test_a_manifest_size_that_contradicts_the_file_is_refused():
    assert _enhancer("gpen", 256, manifest_size=[256, 256]).input_size == 256
    with pytest.raises(ModelSetInvalid, match=r"gpen.onnx \(enhancer\).*input_size \[512, 512\].*256x256"):
        _enhancer("gpen", 256, manifest_size=[512, 512])


def test_codeformer_gets_its_fidelity_weight_as_a_double():
    enhancer = _enhancer("codeformer", 512)
    assert [(i.name, i.type, i.shape) for i in enhancer.session.get_inputs()] == [
        ("input", "tensor(float)", [1, 3, 512, 512]), ("weight", "tensor(double)", [1])]
    crop = np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    kept = enhancer.restore(crop, EnhancerOptions(weight=1.0))
    restored = enhancer.restore(crop, EnhancerOptions(weight=0.0))
    half = enhancer.restore(crop, EnhancerOptions(weight=0.5))
    assert np.array_equal(kept, crop)  # the stand-in's fidelity 1 keeps the face
    assert np.abs(restored.astype(int) - crop).mean() > 5  # fidelity 0 restores (sharpens) it
    assert np.abs(half.astype(int) - crop).mean() < np.abs(restored.astype(int) - crop).mean()
    assert np.array_equal(enhancer.restore(crop), half)  # FaceFusion's default weight, 0.5


# -- the blend and the role, in a real fusion ------------------------------------------------------------
@pytest.fixture(scope="module")
def enhancer_root(tmp_path_factory, scrfd_path) -> Path:
    root = tmp_path_factory.mktemp("enhancer-models")
    write_test_models(root, detector=scrfd_path, maskers=True, extra_enhancers=True)
    return root


@pytest.fixture(scope="module")
def fuser(enhancer_root, tmp_path_factory):
    return load_fuser(Settings(model_path=enhancer_root, cache_path=tmp_path_factory.mktemp("enhancer-cache")))


@pytest.fixture(scope="module")
def images(fuser):
    return {name: fuser.decode(shared_file("images", f"{name}.jpg").read_bytes()) for name in ("obama", "biden")}


def _enhanced(fuser, images, **enhancement) -> np.ndarray:
    options = FuseOptions(enhance=True, enhancement=EnhancerOptions(**enhancement))
    return fuser.fuse(images["obama"], images["biden"], options).image.bgr


def test_enhancer_blend_mixes_the_enhanced_face_over_the_swapped_one(fuser, images):
    swapped = fuser.fuse(images["obama"], images["biden"], FuseOptions()).image.bgr
    face = max(fuser.detect(images["biden"]), key=lambda f: f.area)
    enhancer = fuser.models.role("enhancer")
    full = swapped.copy()  # the enhanced face pasted with the box, not blended: what blend 100 must give
    restored, matrix = enhancer.enhance(swapped, face)
    paste_back(full, restored, matrix, MaskOptions())
    assert np.array_equal(_enhanced(fuser, images, blend=0), swapped)
    assert np.array_equal(_enhanced(fuser, images, blend=100), full)
    half = _enhanced(fuser, images, blend=50).astype(int)
    assert (full != swapped).sum() > 10000  # the enhancer really changes the face
    assert np.abs(half - (swapped.astype(int) + full) / 2).max() <= 1  # FaceFusion's addWeighted, rounded
    default = _enhanced(fuser, images).astype(int)  # 80 by default
    assert np.abs(default - (0.2 * swapped + 0.8 * full)).max() <= 1


def test_the_enhancer_option_picks_a_role_of_the_set(fuser, images):
    outputs = {role: _enhanced(fuser, images, role=role, blend=100) for role in ("enhancer", *EXTRA_ENHANCER_ROLES)}
    assert len({out.tobytes() for out in outputs.values()}) >= 3  # different kinds, different results
    assert np.array_equal(outputs["codeformer"], _enhanced(fuser, images, role="codeformer", blend=100, weight=0.5))
    for role, match in (("nope", "enhancer 'nope' is not a role of this model set .*enhancer roles are codeformer, "
                                  "enhancer, gpen, restoreformer"),
                        ("swapper", "enhancer 'swapper' is the set's swapper, not an enhancer")):
        with pytest.raises(InvalidOptions, match=match):
            _enhanced(fuser, images, role=role)
    with pytest.raises(InvalidOptions, match="enhancer_weight applies to an enhancer with a fidelity weight.*gfpgan"):
        _enhanced(fuser, images, weight=0.3)
    with pytest.raises(InvalidOptions, match="enhancer_blend applies when enhance is true"):
        FuseOptions(enhancement=EnhancerOptions(blend=50))


def test_codeformer_enhances_face_by_face_and_the_others_together(fuser, images):
    """CodeFormer's (1,) weight cannot share the batch axis the prepared graph would give its input (the
    probe refuses that rewrite: tests/test_batching.py), so its faces run one by one; gfpgan's together."""
    two = fuser.decode(shared_file("images", "two_people.jpg").read_bytes())
    rows = {}
    for role in ("enhancer", "codeformer"):
        enhancer = fuser.models.role(role)
        counter = enhancer.session = RowCounter(enhancer.session)
        try:
            options = FuseOptions(selection=Selection("all"), enhance=True, enhancement=EnhancerOptions(role=role))
            assert fuser.fuse(images["obama"], two, options).report.faces_swapped == 2
        finally:
            enhancer.session = counter.session
        rows[role] = counter.rows
    assert rows == {"enhancer": [2], "codeformer": [1, 1]}


def test_the_options_parse_into_the_enhancer_choice():
    options = parse_options({"enhance": "on", "enhancer": "codeformer", "enhancer_blend": "35",
                             "enhancer_weight": "0.7", "detector_angles": "0, 180,180"}, form=True)
    assert options.enhancement == EnhancerOptions("codeformer", 35, 0.7) and options.detector_angles == (0, 180)
    assert parse_options({}).enhancement == EnhancerOptions() and parse_options({}).detector_angles == (0,)
    for raw, named in (({"enhance": True, "enhancer_blend": 101}, "enhancer_blend must be between 0 and 100"),
                       ({"enhance": True, "enhancer_blend": 50.5}, "enhancer_blend must be an integer"),
                       ({"enhance": True, "enhancer_weight": -0.1}, "enhancer_weight must be between 0 and 1"),
                       ({"enhancer": "codeformer"}, "enhancer applies when enhance is true"),
                       ({"detector_angles": [45]}, "detector_angles must be a list of one or more of 0, 90, 180, 270"),
                       ({"detector_angles": []}, "detector_angles must be")):
        with pytest.raises(InvalidOptions, match=named):
            parse_options(raw)


# -- over HTTP and events -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("enhancer-store")
    (root / "in").mkdir()
    (root / "out").mkdir()
    for name in ("obama.jpg", "biden.jpg"):
        (root / "in" / name).write_bytes(shared_file("images", name).read_bytes())
    return root


@pytest.fixture(scope="module")
def server(enhancer_root, store, tmp_path_factory):
    srv = FunctionServer({"MODEL_PATH": str(enhancer_root), "CACHE_PATH": str(tmp_path_factory.mktemp("enh-srv")),
                          "ALLOWED_URI_PREFIXES": f"file://{store}/", "ALLOWED_OUTPUT_PREFIXES": f"file://{store}/out/"})
    yield srv
    srv.stop()




def test_enhancer_options_over_http(server, store):
    r = _multipart(server, enhance="true", enhancer="codeformer", enhancer_weight="0.7", enhancer_blend="60")
    assert r.status_code == 200 and r.headers["X-Faces-Swapped"] == "1", r.text
    assert "enhance;dur=" in r.headers["Server-Timing"]
    r = _json(server, enhance=True, enhancer="gpen", enhancer_blend=100)
    assert r.status_code == 200, r.text
    _problem(_multipart(server, enhance="true", enhancer="nope"), "enhancer 'nope' is not a role")
    _problem(_json(server, enhance=True, enhancer="swapper"), "enhancer 'swapper'", "not an enhancer")
    _problem(_json(server, enhance=True, enhancer_blend=101), "enhancer_blend must be between 0 and 100")
    _problem(_multipart(server, enhance="true", enhancer_blend="-1"), "enhancer_blend")
    _problem(_json(server, enhancer_blend=50), "enhancer_blend applies when enhance is true")
    _problem(_json(server, enhance=True, enhancer_weight=0.5), "enhancer_weight applies")
    _problem(_json(server, enhance=True, enhancer_weight=2), "enhancer_weight must be between 0 and 1")
    _problem(_multipart(server, detector_angles="45"), "detector_angles")
    _problem(_json(server, detector_angles=[0, 91]), "detector_angles")
    _problem(_json(server, detector_angles="up"), "detector_angles")
    assert not list((store / "out").iterdir())  # nothing written by any of them
    assert server.alive()


def test_enhancer_and_angles_in_a_fusion_requested_event(server, store):
    upside_down = cv2.rotate(cv2.imread(str(store / "in" / "biden.jpg")), cv2.ROTATE_180)
    cv2.imwrite(str(store / "in" / "biden-180.png"), upside_down)
    out = store / "out" / "event.png"

    def send(options: dict) -> requests.Response:
        event = CloudEvent({"type": "dev.facefusion.fusion.requested", "source": "/tests"},
                           {"source": f"file://{store}/in/obama.jpg", "target": f"file://{store}/in/biden-180.png",
                            "output": f"file://{out}", "options": options})
        headers, body = to_binary(event)
        return requests.post(server.url + "/", data=body, headers=headers, timeout=120)

    assert send({"enhance": True}).status_code == 422 and not out.exists()  # upside down: no face at angle 0
    bad = send({"enhance": True, "enhancer": "nope", "detector_angles": [180]})
    assert bad.status_code == 400 and "enhancer 'nope'" in bad.json()["detail"] and not out.exists()
    r = send({"enhance": True, "enhancer": "restoreformer", "detector_angles": [0, 180]})
    assert r.status_code == 200, r.text
    fused = cv2.imread(str(out))
    assert fused.shape == upside_down.shape and (fused != upside_down).any(axis=2).sum() > 10000


# -- on the command line ------------------------------------------------------------------------------
def _cli(args: list[str], model_root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "MODEL_VERSION", "CACHE_PATH")}
    env.update(MODEL_PATH=str(model_root), CACHE_PATH=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_enhancer_and_angle_flags(enhancer_root, tmp_path):
    obama = str(shared_file("images", "obama.jpg"))
    target = tmp_path / "biden-90.png"
    cv2.imwrite(str(target), cv2.rotate(cv2.imread(str(shared_file("images", "biden.jpg"))), cv2.ROTATE_90_CLOCKWISE))
    out = tmp_path / "o.png"
    ok = _cli(["fuse", obama, str(target), "-o", str(out), "--enhance", "--enhancer", "codeformer",
               "--enhancer-blend", "70", "--enhancer-weight", "0.2", "--detector-angles", "0,90"], enhancer_root, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert '"faces_swapped": 1' in ok.stdout and '"enhanced": true' in ok.stdout
    found = _cli(["detect", str(target), "--detector-angles", "90"], enhancer_root, tmp_path)
    assert found.returncode == 0 and found.stdout.count('"score"') == 1, found.stderr
    for flags, needle in ((["--enhance", "--enhancer", "nope"], "enhancer 'nope'"),
                          (["--enhancer-blend", "50"], "enhancer_blend applies when enhance is true"),
                          (["--enhance", "--enhancer-blend", "101"], "enhancer_blend"),
                          (["--detector-angles", "45"], "detector_angles"),
                          (["--detector-angles", "up"], "detector_angles")):
        bad = _cli(["fuse", obama, str(target), "-o", str(tmp_path / "bad.jpg"), *flags], enhancer_root, tmp_path)
        assert bad.returncode == 2 and needle in bad.stderr, (flags, bad.stderr)
        assert not (tmp_path / "bad.jpg").exists()


def test_make_test_models_writes_every_enhancer_kind_with_its_signature(tmp_path):
    import json

    proc = subprocess.run([sys.executable, "-m", "devtools", "make-test-models", str(tmp_path / "m"),
                           "--standin-detector"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "m" / "current" / "manifest.json").read_text())["models"]
    kinds = {role: spec["kind"] for role, spec in manifest.items() if spec["kind"].removesuffix("-standin") in
             ("gfpgan", "codeformer", "gpen", "restoreformer++")}
    assert kinds == {"enhancer": "gfpgan-standin", "codeformer": "codeformer-standin", "gpen": "gpen-standin",
                     "restoreformer": "restoreformer++-standin"}
    for role in kinds:
        session = ort.InferenceSession(str(tmp_path / "m" / "current" / manifest[role]["file"]),
                                       providers=["CPUExecutionProvider"])
        size = manifest[role]["input_size"][0]
        assert session.get_inputs()[0].name == "input" and session.get_inputs()[0].shape == [1, 3, size, size]
        out = session.run(None, {i.name: (np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
                                          if i.name == "input" else np.array([0.5])) for i in session.get_inputs()})[0]
        assert out.shape == (1, 3, size, size) and out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
