"""Fusion on real photographs with the real SCRFD detector and stand-in recognizer/swapper/enhancer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline import (
    DecodedImage,
    FuseOptions,
    Fuser,
    InvalidOptions,
    NoReferenceFace,
    NoSourceFace,
    NoTargetFace,
    Selection,
    Settings,
    load_fuser,
)

from .conftest import shared_file


@pytest.fixture(scope="module")
def t1(fuser: Fuser, t1_path) -> DecodedImage:
    return fuser.decode(t1_path.read_bytes())


@pytest.fixture(scope="module")
def obama(fuser: Fuser) -> DecodedImage:
    return fuser.decode(shared_file("images", "obama.jpg").read_bytes())


def changed_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (before != after).any(axis=2)


def box_region(face: dict, shape, margin: float) -> tuple[slice, slice]:
    x1, y1, x2, y2 = face["box"]
    w, h = x2 - x1, y2 - y1
    return (slice(max(int(y1 - margin * h), 0), min(int(y2 + margin * h) + 1, shape[0])),
            slice(max(int(x1 - margin * w), 0), min(int(x2 + margin * w) + 1, shape[1])))


def assert_only_faces_changed(before: np.ndarray, after: np.ndarray, report, margin: float = 0.75) -> None:
    """Pixels inside each swapped face changed; nothing outside the swapped faces' regions did.

    A face's region is its detector box grown by `margin` of its size on each side: the aligned 128 px
    crop that the swapper sees spans about twice the box (forehead, chin, cheeks), plus the feather.
    """
    changed = changed_mask(before, after)
    allowed = np.zeros(changed.shape, bool)
    for face in report.faces:
        rows, cols = box_region(face, changed.shape, 0.0)
        if face["swapped"]:
            assert changed[rows, cols].mean() > 0.5, f"face {face['index']} was not swapped"
            allowed[box_region(face, changed.shape, margin)] = True
        else:
            assert not changed[rows, cols].any() or allowed[rows, cols][changed[rows, cols]].all(), (
                f"face {face['index']} changed but was not selected")
    assert not changed[~allowed].any(), f"{int(changed[~allowed].sum())} pixels changed outside the face regions"


def test_all_six_faces_of_t1(fuser: Fuser, t1: DecodedImage):
    faces = fuser.detect(t1)
    assert len(faces) == 6
    assert all(f.score > 0.5 for f in faces)
    xs = [f.bbox[0] for f in faces]
    assert xs == sorted(xs), "faces are reported left to right"


def test_solvay_conference(fuser: Fuser):
    image = fuser.decode(shared_file("images", "solvay_conference_1927.png").read_bytes())
    assert len(fuser.detect(image)) >= 25


def test_matches_insightface_scrfd(fuser: Fuser, t1: DecodedImage, scrfd_path):
    """Our one-pass decoder finds the same boxes and landmarks as insightface's SCRFD at 640x640."""
    scrfd = pytest.importorskip("insightface.model_zoo.scrfd")
    ref = scrfd.SCRFD(str(scrfd_path))
    ref.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    det, kps = ref.detect(t1.bgr, input_size=(640, 640))
    ours = sorted(fuser.detect(t1), key=lambda f: -f.score)
    order = np.argsort(-det[:, 4])
    assert len(ours) == len(det)
    for face, i in zip(ours, order, strict=True):
        np.testing.assert_allclose(face.bbox, det[i, :4], atol=0.5)
        np.testing.assert_allclose(face.kps, kps[i], atol=0.5)


def test_alignment_matches_insightface():
    face_align = pytest.importorskip("insightface.utils.face_align")
    from pipeline.align import estimate_norm

    rng = np.random.default_rng(3)
    for _ in range(20):
        kps = face_align.arcface_dst * rng.uniform(0.5, 4) + rng.uniform(0, 500, 2)
        kps = (kps + rng.normal(0, 3, kps.shape)).astype(np.float32)
        for size in (112, 128):
            np.testing.assert_allclose(estimate_norm(kps, size), face_align.estimate_norm(kps, size), atol=1e-4)


def test_all_swaps_every_face_and_nothing_else(fuser: Fuser, obama, t1):
    result = fuser.fuse(obama, t1, FuseOptions(selection=Selection("all")))
    assert result.report.faces_found == 6 and result.report.faces_swapped == 6
    assert_only_faces_changed(t1.bgr, result.image.bgr, result.report)


def test_largest_swaps_exactly_the_largest(fuser: Fuser, obama, t1):
    result = fuser.fuse(obama, t1)
    swapped = [f for f in result.report.faces if f["swapped"]]
    assert len(swapped) == 1
    area = lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])  # noqa: E731
    assert area(swapped[0]) == max(area(f) for f in result.report.faces)
    assert_only_faces_changed(t1.bgr, result.image.bgr, result.report)


def test_index_swaps_the_named_face(fuser: Fuser, obama, t1):
    result = fuser.fuse(obama, t1, FuseOptions(selection=Selection("index", index=4)))
    assert [f["index"] for f in result.report.faces if f["swapped"]] == [4]
    assert_only_faces_changed(t1.bgr, result.image.bgr, result.report)
    with pytest.raises(InvalidOptions, match="index 9"):
        fuser.fuse(obama, t1, FuseOptions(selection=Selection("index", index=9)))


def test_reference_swaps_only_matches(fuser: Fuser, obama, t1):
    """The reference is a crop of face 2 from another framing; only that face matches it.

    The stand-in recognizer is far less discriminative than ArcFace, hence the strict threshold.
    """
    face = fuser.detect(t1)[2]
    x1, y1, x2, y2 = face.bbox.astype(int)
    w = x2 - x1
    reference = DecodedImage(bgr=t1.bgr[max(y1 - w, 0): y2 + w, max(x1 - w, 0): x2 + w].copy())
    result = fuser.fuse(obama, t1, FuseOptions(selection=Selection("reference", reference_threshold=0.9), reference=reference))
    assert [f["index"] for f in result.report.faces if f["swapped"]] == [2]
    assert all("similarity" in f for f in result.report.faces)
    assert_only_faces_changed(t1.bgr, result.image.bgr, result.report)


def test_min_face_size_filters_small_faces(fuser: Fuser, obama, t1):
    sizes = sorted(min(f.width, f.height) for f in fuser.detect(t1))
    limit = int(sizes[3]) + 1
    result = fuser.fuse(obama, t1, FuseOptions(selection=Selection("all", min_face_size=limit)))
    assert result.report.faces_swapped == len([s for s in sizes if s >= limit]) == 2
    with pytest.raises(NoTargetFace):
        fuser.fuse(obama, t1, FuseOptions(selection=Selection("all", min_face_size=10_000)))


def test_an_index_below_min_face_size_says_so(fuser: Fuser, obama, t1):
    """It said "face index 0 does not exist" of a face that exists and is only too small."""
    from pipeline.selection import order_faces

    sizes = [min(f.width, f.height) for f in order_faces(fuser.detect(t1))]
    small = min(range(len(sizes)), key=sizes.__getitem__)
    limit = int(sizes[small]) + 1
    with pytest.raises(InvalidOptions, match=f"face index {small} is smaller than min_face_size {limit} px"):
        fuser.fuse(obama, t1, FuseOptions(selection=Selection("index", index=small, min_face_size=limit)))
    with pytest.raises(InvalidOptions, match=f"face index {len(sizes)} does not exist; {len(sizes)} face"):
        fuser.fuse(obama, t1, FuseOptions(selection=Selection("index", index=len(sizes), min_face_size=limit)))


def test_source_without_face(fuser: Fuser, t1):
    blank = DecodedImage(bgr=np.full((300, 400, 3), 200, np.uint8))
    with pytest.raises(NoSourceFace):
        fuser.fuse(blank, t1)


def test_target_without_face(fuser: Fuser, obama):
    blank = DecodedImage(bgr=np.full((300, 400, 3), 90, np.uint8))
    with pytest.raises(NoTargetFace):
        fuser.fuse(obama, blank)


def test_reference_without_face(fuser: Fuser, obama, t1):
    blank = DecodedImage(bgr=np.full((64, 64, 3), 0, np.uint8))
    with pytest.raises(NoReferenceFace):
        fuser.fuse(obama, t1, FuseOptions(selection=Selection("reference"), reference=blank))


def test_unknown_selector_is_invalid():
    with pytest.raises(InvalidOptions):
        Selection("everyone")


def test_enhancer_changes_the_face_only_when_asked(fuser: Fuser, obama, t1):
    plain = fuser.fuse(obama, t1)
    enhanced = fuser.fuse(obama, t1, FuseOptions(enhance=True))
    assert enhanced.report.enhanced and not plain.report.enhanced
    assert "enhance" in enhanced.report.timings_ms
    diff = changed_mask(plain.image.bgr, enhanced.image.bgr)
    assert diff.any()
    assert_only_faces_changed(t1.bgr, enhanced.image.bgr, enhanced.report)


def test_enhance_without_enhancer_is_refused(model_root, tmp_path, scrfd_path, obama, t1):
    from devtools.standins import write_test_models

    write_test_models(tmp_path / "m", detector=scrfd_path, enhancer=False)
    bare = load_fuser(Settings(model_path=tmp_path / "m", cache_path=tmp_path / "c"))
    with pytest.raises(InvalidOptions, match="enhancer"):
        bare.fuse(obama, t1, FuseOptions(enhance=True))


def test_report_and_timings(fuser: Fuser, obama, t1_path):
    # a source no other test fuses (the session's fuser caches embeddings by content), so it is embedded here
    source = cv2.imencode(".jpg", obama.bgr, [cv2.IMWRITE_JPEG_QUALITY, 93])[1].tobytes()
    result = fuser.fuse_bytes(source, t1_path.read_bytes(), FuseOptions(output_format="png"))
    report = result.report
    assert result.media_type == "image/png" and result.data.startswith(b"\x89PNG")
    assert {"decode", "detect", "embed", "swap", "paste", "encode"} <= set(report.timings_ms)
    assert report.faces_found == 6 and report.faces_swapped == 1
    assert report.model_version == "test"
    assert len(report.faces[0]["box"]) == 4 and len(report.faces[0]["landmarks"]) == 5


def test_bytes_in_pastes_into_its_own_decode_and_a_given_image_stays_untouched(fuser: Fuser, obama, t1_path):
    """fuse_bytes pastes the faces into the target it decoded itself (no copy of the frame); fuse, given
    a caller's image (video frames, the CLI), leaves it as it was. Both give the same pixels."""
    target = fuser.decode(t1_path.read_bytes())
    before = target.bgr.copy()
    options = FuseOptions(selection=Selection("all"), output_format="png")
    given = fuser.fuse(obama, target, options)
    np.testing.assert_array_equal(target.bgr, before)
    assert given.image.bgr is not target.bgr
    from_bytes = fuser.fuse_bytes(shared_file("images", "obama.jpg").read_bytes(), t1_path.read_bytes(), options)
    assert from_bytes.report.faces_swapped == given.report.faces_swapped == 6
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(from_bytes.data, np.uint8), cv2.IMREAD_COLOR), given.image.bgr)


def test_source_face_is_cached_by_content(fuser: Fuser, t1_path):
    src = shared_file("images", "obama.jpg").read_bytes()
    fuser.fuse_bytes(src, t1_path.read_bytes())
    second = fuser.fuse_bytes(src, t1_path.read_bytes())
    assert "embed" not in second.report.timings_ms  # the source was neither detected nor embedded again


def test_paste_back_matches_insightface(fuser: Fuser, obama, t1, model_root):
    """Same output as insightface's full-frame paste back: identical outside the region, within 2 levels inside."""
    inswapper = pytest.importorskip("insightface.model_zoo.inswapper")
    from types import SimpleNamespace

    from pipeline.paste import paste_back

    ref = inswapper.INSwapper(str(model_root / "test" / "swap.onnx"), session=fuser.swapper.session)
    src_face = fuser.detect(obama)[0]
    src_face.embedding = fuser.embedder.embed(obama.bgr, src_face)
    latent = fuser.swapper.latent(src_face.embedding)
    for face in fuser.detect(t1):
        target_face, source_face = SimpleNamespace(kps=face.kps), SimpleNamespace(normed_embedding=src_face.embedding)
        expected = ref.get(t1.bgr, target_face, source_face, paste_back=True)
        ref_crop, ref_matrix = ref.get(t1.bgr, target_face, source_face, paste_back=False)
        # our swap step reproduces insightface's crop (alignment differs only in float rounding)
        swapped, matrix = fuser.swapper.swap(t1.bgr, face, latent)
        assert np.abs(swapped.astype(int) - ref_crop.astype(int)).max() <= 1
        np.testing.assert_allclose(matrix, ref_matrix, atol=1e-3)
        # and our paste back of the same crop matches its full-frame paste back
        ours = t1.bgr.copy()
        x0, y0, x1, y1 = paste_back(ours, ref_crop, ref_matrix)
        inside = np.zeros(t1.bgr.shape[:2], bool)
        inside[y0:y1, x0:x1] = True
        assert (ours[~inside] == expected[~inside]).all()
        assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 2
        assert x1 - x0 < t1.bgr.shape[1] and y1 - y0 < t1.bgr.shape[0]  # a region, not the frame
