"""RestoreFormer++: 512x512 RGB in [-1, 1], same out, `ffhq_512` template.

Facts from FaceFusion's face_enhancer model set (facefusion/processors/modules/face_enhancer/core.py):
`restoreformer_plus_plus` has template `ffhq_512`, size 512x512 and one input named `input`.
"""

from __future__ import annotations

from .enhancer import FaceEnhancer


class RestoreFormerEnhancer(FaceEnhancer):
    """RestoreFormer++ restoration of a face aligned on the FFHQ template."""

    kind = "restoreformer++"
    template_name = "ffhq_512"
