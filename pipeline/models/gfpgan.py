"""Optional face restoration with a GFPGAN-style model (512x512 RGB in [-1, 1], same out)."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort

from ..align import FFHQ_512_TEMPLATE, umeyama_similarity
from ..faces import Face
from .base import ModelKind


class FaceEnhancer(ModelKind):
    """GFPGAN-style restoration of a face aligned on the FFHQ template."""

    kind = "gfpgan"
    category = "enhancer"
    default_input_size = (512, 512)

    def __init__(self, session: ort.InferenceSession, input_size: tuple[int, int] | None = None):
        super().__init__(session, input_size)
        self.template = FFHQ_512_TEMPLATE * (self.input_size / 512.0)

    def enhance(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """Returns (restored BGR crop, frame->crop matrix) for paste back."""
        matrix = umeyama_similarity(face.kps, self.template)
        aligned = cv2.warpAffine(image, matrix, (self.input_size,) * 2, borderMode=cv2.BORDER_REFLECT101)
        blob = cv2.dnn.blobFromImage(aligned, 1.0 / 127.5, (self.input_size,) * 2, (127.5,) * 3, swapRB=True)
        out = self.run(blob)[0]
        rgb = np.clip((out.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb[:, :, ::-1]), matrix
