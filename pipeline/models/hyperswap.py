"""HyperSwap (hyperswap_1a/1b/1c_256), FaceFusion's default swapper since 3.3.

Facts: FaceFusion `face_swapper/core.py` model set `hyperswap_1a_256`: template arcface_128, size 256,
mean 0.5 and standard deviation 0.5 (RGB in -1..1), output denormalised the same way
(`normalize_crop_frame`); source: the L2-normalised embedding (`embedding_norm`, averaged over the
sources as it is, not normalised again). facefusion-labs `hyperswap/src/exporting.py`: inputs
`source` (1 x 512) and `target` (1 x 3 x 256 x 256), outputs `output` (the face) and `mask`; a fixed
batch of 1. Licence: ResearchRAIL.
"""

from __future__ import annotations

import numpy as np

from ..identity import SourceIdentity
from .swapper import FaceSwapper


class HyperSwap(FaceSwapper):
    kind = "hyperswap"
    default_input_size = (256, 256)
    template = "arcface_128"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    denormalise_output = True

    def prepare_source(self, identity: SourceIdentity) -> np.ndarray:
        return identity.embedding_norm.reshape(1, -1).astype(np.float32)
