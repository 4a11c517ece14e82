"""Pasting the faces of a frame side by side (pipeline/paste.py `paste_all`): same image as one at a time.

Real faces: the 29 of the Solvay photograph, found by the real SCRFD, each crop aligned by the real
swapper code and altered so that every paste changes pixels; faces whose regions meet are added by
shifting copies of real faces, with crops of other colours, so that the order of their pastes shows.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline import paste as paste_module
from pipeline.faces import Face
from pipeline.images import decode_image
from pipeline.masks import DEFAULT_MASKS, MaskOptions
from pipeline.paste import disjoint_waves, paste_all, paste_back, paste_region

from .conftest import helper_slots, shared_file


@pytest.fixture(scope="module")
def solvay(fuser):
    image = decode_image(shared_file("images", "solvay_conference_1927.png").read_bytes(), fuser.limits).bgr
    faces = fuser.detector.detect(image)
    assert len(faces) >= 25
    return image, faces


def _pastes(fuser, image, faces):
    pastes = []
    for index, face in enumerate(faces):
        crop, matrix = fuser.swapper.align(image, face)
        altered = cv2.add(255 - crop, np.full_like(crop, 20 * (index % 7)))  # another face per index
        pastes.append((altered, matrix, []))
    return pastes


def _one_at_a_time(image, pastes, masks):
    frame = image.copy()
    for crop, matrix, crop_masks in pastes:
        paste_back(frame, crop, matrix, masks, crop_masks)
    return frame


@pytest.mark.parametrize("threaded_min_pixels", [0, paste_module.THREADED_MIN_PIXELS])
@pytest.mark.parametrize("masks", [DEFAULT_MASKS, MaskOptions(types=("box",), blur=0.6, padding=(10, 0, 0, 0))])
def test_side_by_side_gives_the_face_by_face_image(fuser, solvay, masks, threaded_min_pixels, monkeypatch):
    """The Solvay faces are small, so by default this thread pastes them all; with no size limit every
    face of a wave but one goes to the paste threads."""
    monkeypatch.setattr(paste_module, "THREADED_MIN_PIXELS", threaded_min_pixels)
    helper_slots(monkeypatch, 3)  # side by side even on a 1-CPU runner
    image, faces = solvay
    shifted = [Face(bbox=f.bbox + 12, score=f.score, kps=f.kps + 12) for f in faces[:6]]  # they meet the originals
    pastes = _pastes(fuser, image, [*faces, *shifted])
    regions = [paste_region(m, c.shape[0], image.shape, masks) for c, m, _ in pastes]
    waves = disjoint_waves(regions)
    assert 2 <= len(waves) <= len(pastes) // 4  # many faces at once; the shifted copies after the faces they meet
    frame = image.copy()
    paste_all(frame, pastes, masks)
    want = _one_at_a_time(image, pastes, masks)
    assert np.array_equal(frame, want)
    assert not np.array_equal(want, _one_at_a_time(image, pastes[::-1], masks))  # the order shows in the image


def test_occlusion_like_crop_masks_go_with_their_face(fuser, solvay, monkeypatch):
    monkeypatch.setattr(paste_module, "THREADED_MIN_PIXELS", 0)
    helper_slots(monkeypatch, 3)  # side by side even on a 1-CPU runner
    image, faces = solvay
    pastes = _pastes(fuser, image, faces[:8])
    half = np.zeros(pastes[0][0].shape[:2], np.float32)
    half[:, : half.shape[1] // 2] = 1.0  # only the left half of each face is replaced
    pastes = [(crop, matrix, [half]) for crop, matrix, _ in pastes]
    frame = image.copy()
    paste_all(frame, pastes)
    assert np.array_equal(frame, _one_at_a_time(image, pastes, DEFAULT_MASKS))


def test_waves_keep_the_order_of_regions_that_meet():
    a, b, c, d = (0, 0, 10, 10), (5, 5, 15, 15), (12, 12, 20, 20), (30, 30, 40, 40)
    # b meets a, c meets b (not a), d meets nothing; None (off the frame) touches nothing
    assert disjoint_waves([a, b, c, d, None]) == [[0, 3, 4], [1], [2]]
    assert disjoint_waves([]) == []
    assert disjoint_waves([(0, 0, 10, 10), (10, 0, 20, 10)]) == [[0, 1]]  # touching edges share no pixel
