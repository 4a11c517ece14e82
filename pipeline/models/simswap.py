"""SimSwap (simswap_256, neuralchen): an ArcFace embedding converted into SimSwap's identity space.

Facts: FaceFusion `face_swapper/core.py` model set `simswap_256`: template arcface_112_v1, size 256,
ImageNet mean (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225) on the RGB input; the
output is already in 0..1 (simswap is not among the types `normalize_crop_frame` denormalises);
source: the raw embedding through the `crossface_simswap` converter, then L2-normalised
(`prepare_source_embedding`'s last branch). Inputs are bound by the names `source` (1 x 512) and
`target` (1 x 3 x 256 x 256). Licence: non-commercial.
"""

from __future__ import annotations

import numpy as np

from ..identity import SourceIdentity
from .swapper import FaceSwapper


class SimSwap(FaceSwapper):
    kind = "simswap"
    default_input_size = (256, 256)
    template = "arcface_112_v1"
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    needs_converter = True

    def prepare_source(self, identity: SourceIdentity) -> np.ndarray:
        converted = self.convert(identity.embedding)
        return (converted / np.linalg.norm(converted)).astype(np.float32)
