"""Detection on rotated copies of a frame, so faces lying sideways or upside down are found.

SCRFD is trained on upright faces; a face rotated by 90 degrees or more is missed or found with
landmarks that make no sense. FaceFusion's `face_detector_angles` (facefusion/face_detector.py,
`detect_faces_by_angle`) rotates the frame counter-clockwise by each angle (`cv2.getRotationMatrix2D`,
positive = counter-clockwise), detects, and maps boxes and landmarks back with the inverse rotation;
the union of all angles is then reduced by NMS whose threshold tightens with the number of angles
(`get_nms_threshold`: 0.3 for two angles, 0.2 for three, 0.1 for four). One angle alone is searched
on its copy only, and its faces come back as the detector's own NMS left them.

We do the same with exact quarter turns (`cv2.rotate`: no interpolation, no border). The landmarks keep
their meaning after mapping back: the detector's "left eye" of an upside-down face is still that
person's left eye, so the five-point alignment rotates the crop upright by itself. `detector_angles`
(any of 0, 90, 180, 270; default 0) says which copies are searched; angle 0 alone is the plain detection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from .errors import InvalidOptions
from .faces import Face
from .models.scrfd import nms

DETECTOR_ANGLES = (0, 90, 180, 270)
DEFAULT_DETECTOR_ANGLES = (0,)
# counter-clockwise rotations, as FaceFusion's angles mean them
_ROTATIONS = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
_MERGE_NMS = {2: 0.3, 3: 0.2, 4: 0.1}  # FaceFusion's get_nms_threshold by number of angles


def check_angles(angles: Sequence[int]) -> tuple[int, ...]:
    """The angles, duplicates dropped; InvalidOptions naming `detector_angles` for anything else."""
    if isinstance(angles, (str, bytes)) or not angles or any(
            isinstance(a, bool) or a not in DETECTOR_ANGLES for a in angles):
        raise InvalidOptions(f"detector_angles must be one or more of {', '.join(map(str, DETECTOR_ANGLES))}, "
                             f"got {angles!r}")
    return tuple(dict.fromkeys(int(a) for a in angles))


def to_frame(points: np.ndarray, angle: int, width: int, height: int) -> np.ndarray:
    """Points (..., 2) of the frame rotated counter-clockwise by `angle` back in the frame's coordinates.

    `width`, `height` are the frame's (unrotated). Continuous coordinates: the frame spans [0, W] x [0, H],
    the convention the detector's letterbox scaling uses.
    """
    x, y = points[..., 0], points[..., 1]
    if angle == 90:  # rotated (x', y') = (y, W - x)
        back = (width - y, x)
    elif angle == 180:  # (x', y') = (W - x, H - y)
        back = (width - x, height - y)
    elif angle == 270:  # (x', y') = (H - y, x)
        back = (y, height - x)
    else:
        return points.copy()
    return np.stack(back, axis=-1).astype(np.float32)


def _mapped(face: Face, angle: int, width: int, height: int) -> Face:
    x1, y1, x2, y2 = face.bbox
    corners = to_frame(np.array([[x1, y1], [x2, y2]], np.float32), angle, width, height)
    bbox = np.concatenate([corners.min(axis=0), corners.max(axis=0)]).astype(np.float32)
    return Face(bbox=bbox, score=face.score, kps=to_frame(face.kps, angle, width, height))


def detect_at_angles(detect: Callable[[np.ndarray], list[Face]], image: np.ndarray,
                     angles: Sequence[int] = DEFAULT_DETECTOR_ANGLES) -> list[Face]:
    """Faces found on each rotated copy, mapped back to `image` and merged by NMS (by score)."""
    angles = check_angles(angles)
    if angles == (0,):
        return detect(image)
    height, width = image.shape[:2]
    found: list[Face] = []
    for angle in angles:
        rotated = image if angle == 0 else cv2.rotate(image, _ROTATIONS[angle])
        found += [_mapped(face, angle, width, height) for face in detect(rotated)]
    if len(angles) == 1 or len(found) < 2:  # one copy: the detector's own NMS has already merged its faces
        return found
    dets = np.array([[*face.bbox, face.score] for face in found], np.float32)
    return [found[i] for i in nms(dets, _MERGE_NMS[len(angles)])]
