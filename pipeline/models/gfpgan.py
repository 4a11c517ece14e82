"""GFPGAN (1.2, 1.3, 1.4: one kind, different files): 512x512 RGB in [-1, 1], same out, `ffhq_512` template.

Facts from FaceFusion's face_enhancer model set (facefusion/processors/modules/face_enhancer/core.py):
`gfpgan_1.2`, `gfpgan_1.3` and `gfpgan_1.4` all have template `ffhq_512`, size 512x512 and one input
named `input`; the shared pre- and post-processing is in pipeline/models/enhancer.py.
"""

from __future__ import annotations

from .enhancer import FaceEnhancer


class GfpganEnhancer(FaceEnhancer):
    """GFPGAN restoration of a face aligned on the FFHQ template."""

    kind = "gfpgan"
    template_name = "ffhq_512"
