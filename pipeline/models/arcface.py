"""ArcFace embeddings of aligned 112x112 face crops."""

from __future__ import annotations

import cv2
import numpy as np

from ..align import crop, estimate_norm
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
        aligned = crop(image, estimate_norm(face.kps, self.input_size), self.input_size)
        blob = cv2.dnn.blobFromImage(aligned, 1.0 / self.std, (self.input_size,) * 2, (self.mean,) * 3, swapRB=True)
        return self.run(blob).reshape(-1).astype(np.float32)
