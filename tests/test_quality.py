"""Fusion quality: pixel boost tiles, the box / occlusion / region masks, their options over HTTP and CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from devtools.standins import OCCLUDED_RECT, identity_swapper_model, parser_layout, write_test_models
from function.fusion import parse_options
from pipeline import DecodedImage, FuseOptions, InvalidOptions, Settings, load_fuser
from pipeline.boost import boost_factor, explode, implode
from pipeline.masks import REGIONS, SMOOTH_SIGMA, MaskOptions, feather_kernels, mask_options
from pipeline.models import InSwapper
from pipeline.paste import paste_back

from .conftest import REPO, shared_file
from .conftest import assert_bad_options as _problem
from .conftest import fuse_json as _json
from .conftest import fuse_multipart as _multipart
from .server import FunctionServer


@pytest.fixture(scope="module")
def mask_root(tmp_path_factory, scrfd_path) -> Path:
    """A stand-in set with the real SCRFD and the optional occluder and face_parser."""
    root = tmp_path_factory.mktemp("mask-models")
    write_test_models(root, detector=scrfd_path, enhancer=False, maskers=True)
    return root


@pytest.fixture(scope="module")
def fuser(mask_root, tmp_path_factory):
    return load_fuser(Settings(model_path=mask_root, cache_path=tmp_path_factory.mktemp("mask-cache")))


# -- pixel boost -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_tiles_are_interleaved_sub_samples_and_round_trip_bit_exact(k):
    rng = np.random.default_rng(k)
    crop = rng.integers(0, 256, (128 * k, 128 * k, 3), dtype=np.uint8)
    tiles = implode(crop, k)
    assert tiles.shape == (k * k, 128, 128, 3)
    for i in range(k):
        for j in range(k):
            assert np.array_equal(tiles[i * k + j], crop[i::k, j::k])  # FaceFusion's order
    assert np.array_equal(explode(tiles, k), crop)


def _identity_swapper(batch: bool) -> InSwapper:
    model = identity_swapper_model(batch=batch)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    emap = np.eye(512, dtype=np.float32)
    return InSwapper(session, emap)


@pytest.mark.parametrize("batch", [False, True], ids=["one-by-one", "batched"])
@pytest.mark.parametrize("boost", [128, 256, 512, 1024])
def test_identity_swapper_gives_back_the_crop_at_every_boost(boost, batch):
    """Through the real pre- and post-processing and the ONNX runtime: tiles out == the crop in."""
    swapper = _identity_swapper(batch)
    assert swapper.batched is batch
    k = boost_factor(boost, swapper.input_size)
    crop = np.random.default_rng(boost).integers(0, 256, (boost, boost, 3), dtype=np.uint8)
    latent = swapper.latent(np.ones(512, np.float32))
    assert np.array_equal(swapper.swap_crop(crop, latent, k), crop)


def test_pixel_boost_must_be_a_multiple_of_the_swapper_size():
    assert boost_factor(None, 128) == 1 and boost_factor(512, 128) == 4
    with pytest.raises(InvalidOptions, match="pixel_boost must be a multiple of the swapper's size 256"):
        boost_factor(128, 256)
    with pytest.raises(InvalidOptions, match="pixel_boost must be one of"):
        FuseOptions(pixel_boost=300)


def test_boosted_alignment_frames_the_face_as_the_native_crop(fuser):
    image = fuser.decode(shared_file("images", "obama.jpg").read_bytes())
    face = fuser.detect(image)[0]
    native, m1 = fuser.swapper.align(image.bgr, face)
    boosted, m4 = fuser.swapper.align(image.bgr, face, 4)
    assert boosted.shape == (512, 512, 3) and np.allclose(m4, 4 * m1)
    small = cv2.resize(boosted, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - native.astype(int)).mean() < 10  # the same framing (within sub-pixel shifts)


# -- masks -----------------------------------------------------------------------------------------
def test_default_feather_is_insightfaces():
    for size in range(1, 2000, 7):
        assert feather_kernels(size, 0.3) == (max(size // 10, 10), max(size // 20, 5))
    assert feather_kernels(500, 0) == (0, 0)


def _paste_white(masks: MaskOptions, crop_masks=()) -> np.ndarray:
    """A 200 px white crop pasted at (100, 100) into a black 400x400 frame."""
    frame = np.zeros((400, 400, 3), np.uint8)
    matrix = np.array([[1, 0, -100], [0, 1, -100]], np.float64)
    paste_back(frame, np.full((200, 200, 3), 255, np.uint8), matrix, masks, crop_masks)
    return frame[:, :, 0]


def test_box_padding_cuts_its_side_and_blur_sets_the_feather():
    plain = _paste_white(MaskOptions())
    padded = _paste_white(MaskOptions(padding=(25, 0, 0, 0)))
    assert plain[120:280, 200].min() > 0 and plain[100:150, 100:300].max() > 0  # its top swaps without padding
    assert padded[100:150, 100:300].max() == 0  # the top quarter of the crop is cut off
    assert padded[170:280, 200].min() > 0  # the rest still swaps
    hard = _paste_white(MaskOptions(blur=0))
    assert hard[100:300, 100:300].min() == 255 and hard.sum() == 255 * 200 * 200  # a hard-edged square
    wide = _paste_white(MaskOptions(blur=1))
    assert (wide == 255).sum() < (plain == 255).sum() < (hard == 255).sum()
    assert (wide > 0).sum() < (hard > 0).sum() and wide[:100].max() == 0  # never beyond the crop


def test_crop_masks_combine_as_the_minimum():
    half = np.ones((200, 200), np.float32)
    half[:, 100:] = 0
    combined = _paste_white(MaskOptions(blur=0), [half])
    assert combined[100:300, 100:200].min() == 255 and combined[:, 201:].max() == 0
    alone = _paste_white(MaskOptions(types=("occlusion",)), [half])
    assert np.array_equal(alone, combined)  # with a hard box the box adds nothing inside the crop


def test_mask_options_are_checked():
    for kwargs, named in (({"types": ("box", "bogus")}, "mask must"), ({"types": ()}, "mask must"),
                          ({"blur": 1.5}, "mask_blur"), ({"padding": (1, 2, 3)}, "mask_padding"),
                          ({"padding": (0, 0, 101, 0)}, "mask_padding"), ({"regions": ("ears",)}, "mask_regions")):
        with pytest.raises(InvalidOptions, match=named):
            MaskOptions(**kwargs)
    with pytest.raises(InvalidOptions, match="mask_regions applies to the region mask"):
        mask_options(("box",), regions=("nose",))
    with pytest.raises(InvalidOptions, match="mask_padding applies to the box mask"):
        mask_options(("region",), padding=(1, 1, 1, 1))
    assert mask_options(("region", "box", "region")).types == ("region", "box")
    for padding in ((50, 0, 50, 0), (0, 100, 0, 0)):
        with pytest.raises(InvalidOptions, match="cuts away the whole face"):
            mask_options(("box",), padding=padding)
        # a video job an earlier revision accepted keeps its options for each segment
        assert mask_options(("box",), padding=padding, accepted=True).padding == padding


def _crop_coords(matrix: np.ndarray, shape: tuple[int, ...], scale: float) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    u = (matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]) * scale
    v = (matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]) * scale
    return u, v


@pytest.fixture(scope="module")
def biden(fuser):
    return fuser.decode(shared_file("images", "biden.jpg").read_bytes())


@pytest.fixture(scope="module")
def obama(fuser):
    return fuser.decode(shared_file("images", "obama.jpg").read_bytes())


@pytest.mark.parametrize("boost", [None, 512])
def test_occluded_pixels_keep_the_target_exactly(fuser, obama, biden, boost):
    options = FuseOptions(pixel_boost=boost, masks=mask_options(("box", "occlusion")))
    out = fuser.fuse(obama, biden, options).image.bgr
    face = max(fuser.detect(biden), key=lambda f: f.area)
    k = boost_factor(boost, 128)
    _, matrix = fuser.swapper.align(biden.bgr, face, k)
    size = 128 * k
    u, v = _crop_coords(matrix, biden.bgr.shape, 256 / size)  # in the occluder's 256x256 input
    margin = (2 * SMOOTH_SIGMA + 2) * 256 / size
    y0, y1, x0, x1 = OCCLUDED_RECT
    inside = (v > y0 + margin) & (v < y1 - margin) & (u > x0 + margin) & (u < x1 - margin)
    changed = (out != biden.bgr).any(axis=2)
    assert inside.sum() > 1000 and changed.sum() > 2 * inside.sum()  # a real occluded area, a real swap
    assert not (changed & inside).any()
    boxed = fuser.fuse(obama, biden, FuseOptions(pixel_boost=boost)).image.bgr
    assert (boxed != biden.bgr).any(axis=2)[inside].mean() > 0.9  # without occlusion those pixels swap


def test_region_mask_swaps_only_the_chosen_classes(fuser, obama, biden):
    face = max(fuser.detect(biden), key=lambda f: f.area)
    _, matrix = fuser.swapper.align(biden.bgr, face)
    u, v = _crop_coords(matrix, biden.bgr.shape, 512 / 128)  # in the parser's 512x512 input
    layout = parser_layout()
    cell_u, cell_v = np.clip(u // 8, 0, 63).astype(int), np.clip(v // 8, 0, 63).astype(int)
    in_crop = (u >= 0) & (u < 512) & (v >= 0) & (v < 512)
    classes = np.where(in_crop, layout[cell_v, cell_u], 0)
    reach = int(np.ceil((2 * SMOOTH_SIGMA + 2) * 4 / 8))  # the smoothing's reach, in layout cells
    changed = {}
    for regions in (("nose",), ("skin",), ("nose", "upper-lip", "mouth", "lower-lip")):
        options = FuseOptions(masks=mask_options(("box", "region"), regions=regions))
        out = fuser.fuse(obama, biden, options).image.bgr
        changed[regions] = (out != biden.bgr).any(axis=2)
        chosen = np.isin(layout, [REGIONS[r] for r in regions]).astype(np.uint8)
        near = cv2.dilate(chosen, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
        assert not (changed[regions] & ~near[cell_v, cell_u].astype(bool)).any(), regions
        core = cv2.erode(chosen, np.ones((3, 3), np.uint8))[cell_v, cell_u].astype(bool)  # a cell inside
        assert changed[regions][core & in_crop].mean() > 0.9, regions
    assert changed[("nose",)].sum() < changed[("nose", "upper-lip", "mouth", "lower-lip")].sum()
    assert changed[("nose",)].sum() < changed[("skin",)].sum()
    assert not changed[("nose",)][classes == REGIONS["left-eye"]].any()


def test_masks_need_their_models(tmp_path, scrfd_path, obama):
    root = tmp_path / "models"
    write_test_models(root, detector=scrfd_path, enhancer=False, maskers=False)
    bare = load_fuser(Settings(model_path=root, cache_path=tmp_path / "cache"))
    for types, named in ((("box", "occlusion"), "mask=occlusion .* no occluder"), (("region",), "mask=region .* no face_parser")):
        with pytest.raises(InvalidOptions, match=named):
            bare.fuse(obama, obama, FuseOptions(masks=mask_options(types)))


# -- the option schema (checked against its JSON Schema in test_api_defects) ----------------------------
def test_parse_options_builds_the_quality_options():
    opts = parse_options({"pixel_boost": "512", "mask": "box,region", "mask_regions": "nose, skin",
                          "mask_padding": "10,0,0,0", "mask_blur": "0.5"}, form=True)
    assert opts.pixel_boost == 512 and opts.masks.types == ("box", "region")
    assert opts.masks.regions == ("nose", "skin") and opts.masks.padding == (10, 0, 0, 0) and opts.masks.blur == 0.5
    assert parse_options({}).masks.default and parse_options({}).pixel_boost is None
    with pytest.raises(InvalidOptions, match="mask_regions"):
        parse_options({"mask_regions": ["nose"]})


# -- over HTTP ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(mask_root, tmp_path_factory, scrfd_path):
    bare = tmp_path_factory.mktemp("bare-models")
    write_test_models(bare, detector=scrfd_path, enhancer=False, maskers=False)
    started = {}
    try:
        for name, root in (("full", mask_root), ("bare", bare)):
            started[name] = FunctionServer({"MODEL_PATH": str(root),
                                            "CACHE_PATH": str(tmp_path_factory.mktemp(f"cache-{name}"))})
        yield started
    finally:
        for srv in started.values():
            srv.stop()




def test_quality_options_over_http(servers):
    full, bare = servers["full"], servers["bare"]
    r = _multipart(full, pixel_boost="256", mask="box,occlusion,region", mask_regions="nose,skin",
                   mask_padding="5,0,0,0", mask_blur="0.4")
    assert r.status_code == 200 and r.headers["X-Faces-Swapped"] == "1", r.text
    r = _json(full, pixel_boost=512, mask=["box", "region"], mask_regions=["nose"])
    assert r.status_code == 200 and r.headers["X-Faces-Swapped"] == "1", r.text
    assert _json(bare, pixel_boost=256).status_code == 200
    _problem(_multipart(full, mask="box,bogus"), "mask must")
    _problem(_json(full, mask="box", mask_regions=["nose"]), "mask_regions")
    _problem(_multipart(full, mask_regions="nose"), "mask_regions")
    _problem(_json(full, pixel_boost=300), "pixel_boost")
    _problem(_multipart(full, pixel_boost="big"), "pixel_boost")
    _problem(_json(full, mask_padding=[1, 2]), "mask_padding")
    _problem(_json(full, mask_padding=[60, 0, 40, 0]), "mask_padding", "whole face")  # was a 200 with nothing swapped
    assert _json(full, mask_padding=[49, 0, 50, 0]).status_code == 200
    _problem(_json(full, mask_blur=2), "mask_blur")
    _problem(_json(bare, mask=["box", "occlusion"]), "occlusion", "occluder")
    _problem(_multipart(bare, mask="region"), "region", "face_parser")


# -- on the command line ---------------------------------------------------------------------------
def _cli(args: list[str], model_root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "MODEL_VERSION", "CACHE_PATH")}
    env.update(MODEL_PATH=str(model_root), CACHE_PATH=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_quality_flags(mask_root, tmp_path):
    obama, biden = str(shared_file("images", "obama.jpg")), str(shared_file("images", "biden.jpg"))
    out = tmp_path / "o.png"
    ok = _cli(["fuse", obama, biden, "-o", str(out), "--pixel-boost", "256", "--mask", "box,occlusion,region",
               "--mask-regions", "nose,mouth", "--mask-padding", "0,5,0,5", "--mask-blur", "0.2"], mask_root, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert cv2.imread(str(out)).shape[:2] == DecodedImage(bgr=cv2.imread(biden)).bgr.shape[:2]
    for flags, needle in ((["--mask-regions", "nose"], "mask_regions"), (["--mask", "box,hat"], "mask must"),
                          (["--mask-padding", "1,2"], "mask_padding"), (["--mask-blur", "3"], "mask_blur"),
                          (["--pixel-boost", "300"], "--pixel-boost")):
        bad = _cli(["fuse", obama, biden, "-o", str(tmp_path / "bad.jpg"), *flags], mask_root, tmp_path)
        assert bad.returncode == 2 and needle in bad.stderr, (flags, bad.stderr)
        assert not (tmp_path / "bad.jpg").exists()


# -- stand-ins ------------------------------------------------------------------------------------
def test_make_test_models_writes_the_maskers_with_the_real_signatures(tmp_path):
    import json

    proc = subprocess.run([sys.executable, "-m", "devtools", "make-test-models", str(tmp_path / "m"),
                           "--standin-detector"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "m" / "current" / "manifest.json").read_text())["models"]
    assert manifest["occluder"]["kind"] == "xseg-standin" and manifest["face_parser"]["kind"] == "bisenet-standin"
    signatures = {"occluder": ([("input", [1, 256, 256, 3])], [("output", [1, 256, 256, 1])]),
                  "face_parser": ([("input", [1, 3, 512, 512])], [("output", [1, 19, 512, 512])])}
    for role, (inputs, outputs) in signatures.items():
        session = ort.InferenceSession(str(tmp_path / "m" / "current" / manifest[role]["file"]),
                                       providers=["CPUExecutionProvider"])
        assert [(i.name, i.shape) for i in session.get_inputs()] == inputs
        assert [(o.name, o.shape) for o in session.get_outputs()] == outputs
    occluder = ort.InferenceSession(str(tmp_path / "m" / "current" / "occluder.onnx"), providers=["CPUExecutionProvider"])
    mask = occluder.run(None, {"input": np.random.default_rng(0).random((1, 256, 256, 3), np.float32)})[0]
    y0, y1, x0, x1 = OCCLUDED_RECT
    assert mask.min() == 0 and mask.max() == 1 and mask[0, y0:y1, x0:x1].max() == 0 and mask.sum() == 256 * 256 - (
        (y1 - y0) * (x1 - x0))
