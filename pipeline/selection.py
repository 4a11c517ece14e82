"""Which target faces to swap: largest (default), all, index, or those matching a reference face."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from .errors import InvalidOptions, NoMatchingFace
from .faces import Face

MODES = ("largest", "all", "index", "reference")
DEFAULT_REFERENCE_THRESHOLD = 0.4
# options (and the reference image) that only one mode reads: given beside another mode they would be
# silently ignored, so the function and the CLI refuse them (as enhancer without enhance)
MODE_OPTIONS = {"index": "index", "reference_threshold": "reference", "reference": "reference"}


def misplaced(mode: str, given: Collection[str]) -> str | None:
    """The first option among `given` (names) that only another mode than `mode` reads; None if none."""
    return next((name for name, needs in MODE_OPTIONS.items() if name in given and needs != mode), None)


@dataclass(frozen=True)
class Selection:
    """How to pick target faces. `index` counts faces left to right (by the box's left edge)."""

    mode: str = "largest"
    index: int | None = None
    reference_threshold: float = DEFAULT_REFERENCE_THRESHOLD
    min_face_size: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidOptions(f"faces must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.mode == "index" and (self.index is None or self.index < 0):
            raise InvalidOptions("faces=index needs a non-negative face index")
        if not -1.0 <= self.reference_threshold <= 1.0:
            raise InvalidOptions("reference_threshold is a cosine similarity between -1 and 1")
        if self.min_face_size < 0:
            raise InvalidOptions("min_face_size cannot be negative")


def order_faces(faces: list[Face]) -> list[Face]:
    """A stable, human-friendly order: left to right, then top to bottom."""
    return sorted(faces, key=lambda f: (round(float(f.bbox[0])), round(float(f.bbox[1]))))


def eligible(faces: list[Face], min_face_size: int) -> list[int]:
    return [i for i, f in enumerate(faces) if min(f.width, f.height) >= min_face_size]


def choose(faces: list[Face], selection: Selection, candidates: list[int], reference: np.ndarray | None = None) -> list[int]:
    """Indices into `faces` (already ordered) to swap; `candidates` are those above the minimum size."""
    if not candidates:
        return []
    if selection.mode == "all":
        return list(candidates)
    if selection.mode == "largest":
        return [max(candidates, key=lambda i: faces[i].area)]
    if selection.mode == "index":
        if selection.index not in candidates:
            if selection.index is not None and selection.index < len(faces):  # it exists, but is too small
                raise InvalidOptions(f"face index {selection.index} is smaller than min_face_size "
                                     f"{selection.min_face_size} px; faces large enough: "
                                     f"{', '.join(map(str, candidates))} of {len(faces)} found")
            raise InvalidOptions(f"face index {selection.index} does not exist; {len(faces)} face(s) found")
        return [int(selection.index)]
    if reference is None:
        raise InvalidOptions("faces=reference needs a reference image")
    similarity = {i: float(faces[i].embedding @ reference) for i in candidates if faces[i].embedding is not None}
    matched = [i for i, s in similarity.items() if s >= selection.reference_threshold]
    if not matched:  # like every other selection that finds nothing: a failure, not the unchanged image
        best = f"; the closest has similarity {max(similarity.values()):.3f}" if similarity else ""
        raise NoMatchingFace(f"no face of the target matches the reference face at reference_threshold "
                             f"{selection.reference_threshold}{best}")
    return matched
