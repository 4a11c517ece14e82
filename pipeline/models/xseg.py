"""Occlusion: an XSeg-style occluder marks which pixels of an aligned face crop are the face.

The published occluders (FaceFusion's xseg_1..3, from DeepFaceLab's XSeg) take one 256x256 face crop
as NHWC float32, BGR channels in 0..1, and answer a 1x256x256x1 mask in 0..1 (1: the face is visible).
`occlusion` returns that mask resized to the crop and smoothed (pipeline/masks.py): 0 where something
(hair, a hand, glasses) is in front of the face, so paste back keeps the target's pixels there.
"""

from __future__ import annotations

import numpy as np

from ..masks import occlusion_mask
from .base import ModelKind


class FaceOccluder(ModelKind):
    """XSeg-style occlusion mask of an aligned face crop."""

    kind = "xseg"
    category = "occluder"
    default_input_size = (256, 256)

    def raw(self, crop: np.ndarray) -> np.ndarray:
        """The model's mask (input_size x input_size, 0..1) of a BGR crop of any size."""
        blob = (self.fit(crop).astype(np.float32) / 255.0)[None]
        return np.clip(self.run(blob).reshape(self.input_size, self.input_size), 0, 1)

    def occlusion(self, crop: np.ndarray) -> np.ndarray:
        """Crop-sized mask in 0..1: 1 where the face is visible, 0 where it is occluded."""
        return occlusion_mask(self.raw(crop), crop.shape[0])
