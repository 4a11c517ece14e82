"""GPEN-BFR (256, 512, 1024, 2048: one kind): NxN RGB in [-1, 1], same out; N from the file or manifest.

Facts from FaceFusion's face_enhancer model set (facefusion/processors/modules/face_enhancer/core.py):
`gpen_bfr_256` is aligned on the `arcface_128` template at 256x256, `gpen_bfr_512`, `gpen_bfr_1024` and
`gpen_bfr_2048` on `ffhq_512` at their own size; one input named `input`. The size comes from the
manifest's `input_size`, else from the graph's fixed input shape (FaceEnhancer.create).
"""

from __future__ import annotations

from .enhancer import FaceEnhancer


class GpenEnhancer(FaceEnhancer):
    """GPEN blind face restoration at the file's own size."""

    kind = "gpen"
    template_name = "ffhq_512"

    @classmethod
    def template_for_size(cls, size: int) -> str:
        return "arcface_128" if size == 256 else "ffhq_512"
