"""Five-point landmark templates that the swappers align faces onto, in units of the crop size.

The numbers are FaceFusion's `WARP_TEMPLATE_SET` (facefusion/face_helper.py): each template times a
crop size gives where the eyes, nose tip and mouth corners land in that crop. `arcface_128` is built
from insightface's ArcFace template shifted by 8 pixels at 128 (`pipeline.align.template_for(128)`),
which is what FaceFusion's table holds to 1e-7; building it that way keeps the inswapper's alignment
bit-identical to before this table existed.
"""

from __future__ import annotations

import numpy as np

from .align import template_for, umeyama_similarity

TEMPLATES: dict[str, np.ndarray] = {
    "arcface_112_v1": np.array([[0.35473214, 0.45658929], [0.64526786, 0.45658929], [0.50000000, 0.61154464],
                                [0.37913393, 0.77687500], [0.62086607, 0.77687500]]),
    "arcface_112_v2": np.array([[0.34191607, 0.46157411], [0.65653393, 0.45983393], [0.50022500, 0.64050536],
                                [0.37097589, 0.82469196], [0.63151696, 0.82325089]]),
    "arcface_128": template_for(128).astype(np.float64) / 128.0,
    "ffhq_512": np.array([[0.37691676, 0.46864664], [0.62285697, 0.46912813], [0.50123859, 0.61331904],
                          [0.39308822, 0.72541100], [0.61150205, 0.72490465]]),
}


def template_matrix(kps: np.ndarray, template: str, size: int) -> np.ndarray:
    """The 2x3 frame->crop similarity putting the landmarks `kps` on `template` in a `size` crop."""
    return umeyama_similarity(kps, TEMPLATES[template] * size)
