"""detector_angles: faces lying sideways or upside down are found on rotated copies, with the real SCRFD,
and their boxes and landmarks mapped back onto the frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline import DecodedImage, FuseOptions, InvalidOptions, NoReferenceFace, NoSourceFace, NoTargetFace
from pipeline.angles import check_angles, to_frame
from pipeline.selection import Selection

from .conftest import shared_file

# turning the photograph clockwise by a; detecting on the copy turned back (counter-clockwise by a) finds it
CLOCKWISE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _turned(points: np.ndarray, angle: int, width: int, height: int) -> np.ndarray:
    """Where points of an upright W x H photograph land once it is turned clockwise by `angle`."""
    x, y = points[..., 0], points[..., 1]
    turned = {90: (height - y, x), 180: (width - x, height - y), 270: (y, width - x)}[angle]
    return np.stack(turned, axis=-1)


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_to_frame_undoes_the_rotation_pixel_for_pixel(angle):
    frame = np.zeros((30, 50), np.uint8)
    frame[7, 41] = 255  # the pixel whose centre is (41.5, 7.5)
    rotated = cv2.rotate(frame, {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180,
                                 270: cv2.ROTATE_90_CLOCKWISE}[angle])
    y, x = np.argwhere(rotated == 255)[0]
    back = to_frame(np.array([[x + 0.5, y + 0.5]], np.float32), angle, 50, 30)
    assert np.allclose(back, [[41.5, 7.5]])


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_a_turned_face_is_found_with_the_upright_landmarks(fuser, angle):
    photo = cv2.imread(str(shared_file("images", "obama.jpg")))
    height, width = photo.shape[:2]
    upright = fuser.detect(DecodedImage(bgr=photo))
    assert len(upright) == 1
    turned = DecodedImage(bgr=cv2.rotate(photo, CLOCKWISE[angle]))
    expected = _turned(upright[0].kps, angle, width, height)
    for angles in ((angle,), (0, 90, 180, 270)):  # the one angle that turns it back, or all (merged by NMS)
        faces = fuser.detect(turned, angles)
        assert len(faces) == 1, angles
        assert np.abs(faces[0].kps - expected).max() < 3, (angles, faces[0].kps, expected)
        corners = _turned(upright[0].bbox.reshape(2, 2), angle, width, height)
        assert np.abs(np.sort(faces[0].bbox.reshape(2, 2), axis=0) - np.sort(corners, axis=0)).max() < 3
    plain = fuser.detect(turned)  # angle 0 alone: the detector's own landmarks of a turned face are wrong
    assert not plain or np.abs(plain[0].kps - expected).max() > 10


def test_all_angles_on_an_upright_group_find_each_face_once(fuser):
    image = fuser.decode(shared_file("images", "two_people.jpg").read_bytes())
    upright = fuser.detect(image)
    merged = fuser.detect(image, (0, 90, 180, 270))
    assert len(upright) == len(merged) == 2
    for a, b in zip(upright, merged, strict=True):
        assert np.abs(a.kps - b.kps).max() < 3


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_one_angle_alone_finds_a_turned_group(fuser, angle):
    """A single angle other than 0 on a frame with several faces (it once raised, a 503 for the request)."""
    photo = cv2.imread(str(shared_file("images", "two_people.jpg")))
    height, width = photo.shape[:2]
    upright = sorted(fuser.detect(DecodedImage(bgr=photo)), key=lambda f: f.bbox[0])
    assert len(upright) == 2
    turned = DecodedImage(bgr=cv2.rotate(photo, CLOCKWISE[angle]))
    found = fuser.detect(turned, (angle,))
    assert len(found) == 2
    for face in upright:
        expected = _turned(face.kps, angle, width, height)
        assert min(np.abs(f.kps - expected).max() for f in found) < 3


def test_an_upside_down_face_is_swapped_only_with_detector_angles(fuser):
    source = fuser.decode(shared_file("images", "obama.jpg").read_bytes())
    target = DecodedImage(bgr=cv2.rotate(cv2.imread(str(shared_file("images", "biden.jpg"))), cv2.ROTATE_180))
    with pytest.raises(NoTargetFace):
        fuser.fuse(source, target, FuseOptions())
    result = fuser.fuse(source, target, FuseOptions(detector_angles=(0, 180)))
    assert result.report.faces_swapped == 1
    changed = (result.image.bgr != target.bgr).any(axis=2)
    box = result.report.faces[0]["box"]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    assert changed[y0:y1, x0:x1].mean() > 0.5 and changed.sum() < 3 * (x1 - x0) * (y1 - y0)  # the face, not elsewhere


def test_bad_angles_are_refused_by_name():
    assert check_angles([180, 0, 180]) == (180, 0)
    for bad in ([], [45], [0, 360], "90", [True]):
        with pytest.raises(InvalidOptions, match="detector_angles"):
            FuseOptions(detector_angles=bad)


def test_an_upside_down_source_and_reference_are_found_with_detector_angles(fuser):
    """The angles apply to every image of the request: a source (and a reference) lying upside down
    gives the same identity as upright, instead of 422."""
    upright = fuser.decode(shared_file("images", "biden.jpg").read_bytes())
    turned = DecodedImage(bgr=cv2.rotate(upright.bgr, cv2.ROTATE_180))
    other = fuser.decode(shared_file("images", "obama.jpg").read_bytes())
    target = fuser.decode(shared_file("images", "two_people.jpg").read_bytes())
    with pytest.raises(NoSourceFace):
        fuser.fuse(turned, target, FuseOptions())
    with pytest.raises(NoSourceFace, match="searched at detector_angles 180"):  # the upright one, turned over
        fuser.fuse(upright, target, FuseOptions(detector_angles=(180,)))
    angles = (0, 180)
    base = fuser.fuse(upright, target, FuseOptions(detector_angles=angles)).image.bgr.astype(np.int16)
    rotated = fuser.fuse(turned, target, FuseOptions(detector_angles=angles)).image.bgr.astype(np.int16)
    different = fuser.fuse(other, target, FuseOptions(detector_angles=angles)).image.bgr.astype(np.int16)
    # the same identity: far closer to the upright source's swap than another person's swap is
    assert np.abs(rotated - base).mean() < np.abs(different - base).mean() / 4
    reference = Selection(mode="reference", reference_threshold=0.0)
    with pytest.raises(NoReferenceFace):
        fuser.fuse(upright, target, FuseOptions(selection=reference, reference=turned))
    found = fuser.fuse(upright, target, FuseOptions(selection=reference, reference=turned, detector_angles=angles))
    assert found.report.faces_swapped >= 1
