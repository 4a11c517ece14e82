"""ArcFace embeddings of aligned 112x112 face crops."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..align import crop, estimate_norm
from ..batch_axis import has_free_batch
from ..faces import Face
from .base import ModelKind


class ArcFaceEmbedder(ModelKind):
    """Computes the L2-normalised identity embedding that the swapper is conditioned on."""

    kind = "arcface"
    category = "recognizer"
    default_input_size = (112, 112)

    mean = 127.5
    std = 127.5

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        vector = self.embed_raw(image, face)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def embed_raw(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The network's output as it is, not normalised: what FaceFusion averages and converts (simswap, ghost)."""
        return self.embed_raw_many(image, [face])[0]

    def embed_many(self, image: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """L2-normalised embeddings of several faces of one image (see `embed_raw_many`)."""
        vectors = self.embed_raw_many(image, faces)
        return [v / n if (n := float(np.linalg.norm(v))) > 0 else v for v in vectors]

    def embed_raw_many(self, image: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """Raw embeddings of several faces of one image: one run when the graph has a free batch axis
        (pipeline/batch_axis.py), else one run per face."""
        if not faces:
            return []
        size = self.input_size
        crops = [crop(image, estimate_norm(face.kps, size), size) for face in faces]
        blob = cv2.dnn.blobFromImages(crops, 1.0 / self.std, (size,) * 2, (self.mean,) * 3, swapRB=True)
        if len(blob) == 1 or has_free_batch(self.session):
            vectors = self.run(blob)
        else:
            vectors = np.concatenate([self.run(blob[i:i + 1]) for i in range(len(blob))])
        return list(vectors.reshape(len(blob), -1).astype(np.float32))
