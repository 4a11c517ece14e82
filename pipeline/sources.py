"""From one or several source images to the identity a fusion swaps in.

Each source image's largest face is detected and embedded (the recogniser's raw output, which the
swapper kinds read as FaceFusion does); the identity is their average (pipeline/identity.py). A source
without a face is skipped and named in the report; a list in which no image has a face fails, naming
`source`. At most `MAX_SOURCES` images, so one request cannot queue unbounded detector work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ImageError, InvalidOptions, NoSourceFace
from .faces import Face
from .identity import SourceIdentity
from .images import DecodedImage
from .models import ArcFaceEmbedder
from .timing import StageTimer

MAX_SOURCES = 8
SourceInput = DecodedImage | Callable[[], DecodedImage]


@dataclass(frozen=True)
class SourceFaces:
    """What the report says of the sources: the face used from each image, and the images without one."""

    faces: list[dict[str, Any]] = field(default_factory=list)  # {"source": i, box, score, landmarks}
    skipped: list[int] = field(default_factory=list)  # 0-based positions of sources without a face

    @property
    def first(self) -> dict[str, Any]:
        """The first used face (the report's `source_face`, as with one source)."""
        return {k: v for k, v in self.faces[0].items() if k != "source"}


def check_count(count: int) -> None:
    """InvalidOptions naming `source` for an empty list or more than MAX_SOURCES images."""
    if not 1 <= count <= MAX_SOURCES:
        raise InvalidOptions(f"source: give 1 to {MAX_SOURCES} images, got {count}", image="source")


def source_key(blobs: Sequence[bytes]) -> str:
    """One cache key for a list of source images (the SHA-256 of each, in order): the same images in the
    same order share their identity; one image's key is its own hash, as before lists existed."""
    hashes = [hashlib.sha256(blob).hexdigest() for blob in blobs]
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def _decoded(source: SourceInput, position: int, count: int, timer: StageTimer) -> DecodedImage:
    if not callable(source):
        return source
    try:
        with timer.stage("decode"):
            return source()
    except ImageError as exc:
        if count > 1 and exc.image is None:  # "source image 2 of 3: ...", the problem's `image` is source
            exc.image, exc.message = "source", f"source image {position + 1} of {count}: {exc.message}"
            exc.args = (exc.message,)
        exc.about("source")
        raise


def largest_face(bgr: np.ndarray, detect: Callable[[np.ndarray], list[Face]], embedder: ArcFaceEmbedder,
                 timer: StageTimer) -> tuple[Face, np.ndarray] | None:
    """The image's largest face with its normalised embedding set, and the raw embedding (what the
    swapper kinds and the averaging read); None when there is no face. Sources and the reference alike."""
    with timer.stage("detect"):
        faces = detect(bgr)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.area)
    with timer.stage("embed"):
        raw = embedder.embed_raw(bgr, face)
    norm = float(np.linalg.norm(raw))
    face.embedding = raw / norm if norm > 0 else raw
    return face, raw


def identify(sources: Sequence[SourceInput], detect: Callable[[np.ndarray], list[Face]], embedder: ArcFaceEmbedder,
             timer: StageTimer) -> tuple[SourceIdentity, SourceFaces]:
    """The averaged identity of the largest face of each source and what the report says of them.

    `detect` finds the faces of a BGR image (the Fuser's detector, on the copies `detector_angles` asks
    for, so a source lying sideways is found as a target would be)."""
    check_count(len(sources))
    found, report, skipped = [], [], []
    for position, source in enumerate(sources):
        image = _decoded(source, position, len(sources), timer)
        largest = largest_face(image.bgr, detect, embedder, timer)
        if largest is None:
            skipped.append(position)
            continue
        face, raw = largest
        found.append((face, raw, image.bgr))
        report.append({"source": position, **face.as_dict()})
    if not found:
        what = ("the source image" if len(sources) == 1
                else f"any of the {len(sources)} source images (each was searched)")
        raise NoSourceFace(f"no face was found in {what}")
    return SourceIdentity.average(found), SourceFaces(faces=report, skipped=skipped)
