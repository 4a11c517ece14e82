"""GHOST (ghost_1/2/3_256, ai-forever): an ArcFace embedding converted into GHOST's identity space.

Facts: FaceFusion `face_swapper/core.py` model sets `ghost_*_256`: template arcface_112_v1, size 256,
mean 0.5 and standard deviation 0.5 (RGB in -1..1), output denormalised the same way; source: the raw
embedding through the `crossface_ghost` converter, not normalised (`prepare_source_embedding`'s ghost
branch); `swapper_weight` mixes in the target's raw embedding (ghost is not among the types
`balance_source_embedding` normalises it for). Inputs `source` (1 x 512), `target` (1 x 3 x 256 x 256).
Licence: Apache-2.0.
"""

from __future__ import annotations

import numpy as np

from ..identity import SourceIdentity
from .swapper import FaceSwapper


class Ghost(FaceSwapper):
    kind = "ghost"
    default_input_size = (256, 256)
    template = "arcface_112_v1"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    denormalise_output = True
    needs_converter = True
    balance_target = "raw"

    def prepare_source(self, identity: SourceIdentity) -> np.ndarray:
        return self.convert(identity.embedding).astype(np.float32)
