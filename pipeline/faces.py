"""The face record shared by detection, selection, embedding and the report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Face:
    """One detected face in frame coordinates."""

    bbox: np.ndarray  # (4,) float32: x1, y1, x2, y2
    score: float
    kps: np.ndarray  # (5, 2) float32: eyes, nose, mouth corners
    embedding: np.ndarray | None = None  # (512,) L2-normalised, when computed

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def as_dict(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.bbox],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.kps],
        }
