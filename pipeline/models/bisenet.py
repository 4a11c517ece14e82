"""Regions: a BiSeNet-style face parser labels every pixel of an aligned face crop.

The published parsers (FaceFusion's bisenet_resnet_18 / _34, trained on CelebAMask-HQ) take one
512x512 crop as NCHW float32 RGB, scaled to 0..1 and normalised with ImageNet's mean (0.485, 0.456,
0.406) and standard deviation (0.229, 0.224, 0.225), and answer 1x19x512x512 class scores; the class of
a pixel is the arg-max (pipeline/masks.py names the regions a caller may choose).
"""

from __future__ import annotations

import numpy as np

from ..masks import region_mask
from .base import ModelKind

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class FaceParser(ModelKind):
    """BiSeNet-style face parsing of an aligned face crop."""

    kind = "bisenet"
    category = "face_parser"
    default_input_size = (512, 512)

    def classes(self, crop: np.ndarray) -> np.ndarray:
        """The class index of every pixel (input_size x input_size) of a BGR crop of any size."""
        rgb = self.fit(crop)[:, :, ::-1].astype(np.float32) / 255.0
        blob = ((rgb - MEAN) / STD).transpose(2, 0, 1)[None]
        return self.run(np.ascontiguousarray(blob))[0].argmax(axis=0)

    def regions(self, crop: np.ndarray, regions: tuple[str, ...]) -> np.ndarray:
        """Crop-sized mask in 0..1 of the chosen regions."""
        return region_mask(self.classes(crop), regions, crop.shape[0])
