"""An embedding converter: maps an ArcFace embedding into the identity space a swapper was trained on.

SimSwap and GHOST were trained with their own recognisers; FaceFusion converts the ArcFace embedding
with a small model per swapper family (`crossface_simswap`, `crossface_ghost`; before 3.4
`arcface_converter_simswap`, `arcface_converter_ghost`). Facts from FaceFusion's
`forward_convert_embedding` (face_swapper/core.py) and facefusion-labs' `crossface/src/exporting.py`:
one input `input` (1 x 512, float32, the raw ArcFace output), one output `output` (1 x 512); a fixed
batch of 1, so several embeddings are converted one by one.
"""

from __future__ import annotations

import numpy as np

from .base import ModelKind


class EmbeddingConverter(ModelKind):
    """Converts raw 512-d ArcFace embeddings; the swapper role it serves is found by name
    (pipeline/models/swapper.py, `converter_role`)."""

    kind = "crossface"
    category = "embedding_converter"
    default_input_size = (512, 1)  # a 512-vector, not an image: the base class keeps only the 512

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """(n x 512) raw embeddings -> (n x 512) converted ones, not normalised."""
        rows = raw.reshape(-1, 512).astype(np.float32)
        return np.concatenate([self.run(row[None]).reshape(1, -1) for row in rows]).astype(np.float32)
