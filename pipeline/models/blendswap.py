"""BlendSwap (blendswap_256, mapooon): the source goes in as a face crop, not an embedding.

Facts: FaceFusion `face_swapper/core.py` model set `blendswap_256`: template ffhq_512, size 256, mean 0
and standard deviation 1 (RGB in 0..1), output in 0..1; source (`prepare_source_frame`): the source
face aligned on arcface_112_v2 at 112 x 112, RGB / 255, NCHW (1 x 3 x 112 x 112), with no mean or
standard deviation. `swapper_weight` does not apply (FaceFusion balances embeddings only). Licence:
non-commercial.
"""

from __future__ import annotations

import numpy as np

from ..align import crop
from ..identity import SourceIdentity
from ..warp_templates import template_matrix
from .swapper import FaceSwapper


def source_crop(identity: SourceIdentity, template: str, size: int) -> np.ndarray:
    """The first source face aligned on `template` at `size`, as 1 x 3 x size x size RGB in 0..1."""
    aligned = crop(identity.image, template_matrix(identity.face.kps, template, size), size)
    rgb = aligned[..., ::-1].astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


class BlendSwap(FaceSwapper):
    kind = "blendswap"
    default_input_size = (256, 256)
    template = "ffhq_512"
    takes_embedding = False
    source_template, source_size = "arcface_112_v2", 112

    def prepare_source(self, identity: SourceIdentity) -> np.ndarray:
        return source_crop(identity, self.source_template, self.source_size)
