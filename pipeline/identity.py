"""The identity a fusion swaps in: one or several source faces, averaged as FaceFusion averages them.

FaceFusion's `get_average_face` (facefusion/face_analyser.py) takes the largest face of each source
image and averages two things separately: the recogniser's raw embeddings (`embedding`) and their
L2-normalised copies (`embedding_norm`); landmarks, box and the rest come from the first face. Each
swapper kind then reads the average it needs (pipeline/models/swapper.py, `prepare_source`). The
swappers that take a face crop instead of an embedding (blendswap, uniface) crop the first source
that has a face: FaceFusion crops `source_paths[0]` with the averaged face's (that is, the first
face's) landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .faces import Face


@dataclass(frozen=True)
class SourceIdentity:
    """The averaged source identity and the first source face with its image (for crop-based kinds)."""

    embedding: np.ndarray  # (512,) mean of the raw recogniser outputs
    embedding_norm: np.ndarray  # (512,) mean of the L2-normalised ones (not normalised again)
    face: Face  # the first source face: its landmarks frame the source crop
    image: np.ndarray  # the BGR image that face is in

    @classmethod
    def average(cls, faces: list[tuple[Face, np.ndarray, np.ndarray]]) -> SourceIdentity:
        """From (face, raw embedding, BGR image) per source with a face, in the order given."""
        if not faces:
            raise ValueError("an identity needs at least one source face")
        raws = np.stack([raw.astype(np.float32).reshape(-1) for _, raw, _ in faces])
        norms = raws / np.maximum(np.linalg.norm(raws, axis=1, keepdims=True), 1e-12)
        first, _, image = faces[0]
        return cls(embedding=raws.mean(axis=0), embedding_norm=norms.mean(axis=0), face=first, image=image)


def balance(source: np.ndarray, target: np.ndarray, weight: float) -> np.ndarray:
    """Move a source embedding toward the target face's: FaceFusion's `balance_source_embedding`.

    b = interp(weight, [0, 1], [0.35, -0.35]) and source' = source * (1 - b) + target * b: weight 0.5
    leaves the source unchanged, 0 pulls it 35 % toward the target face, 1 pushes it 35 % away from it
    (a stronger source identity). `source` is (1, D) or (n, D); `target` is (n, D) or (D,).
    """
    b = np.float32(np.interp(weight, [0.0, 1.0], [0.35, -0.35]))
    return (source * (1 - b) + target.reshape(-1, source.shape[-1]) * b).astype(np.float32)
