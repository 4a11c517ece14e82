"""CodeFormer: 512x512 RGB in [-1, 1] plus a fidelity `weight`, `ffhq_512` template.

Facts from FaceFusion's face_enhancer (facefusion/processors/modules/face_enhancer/core.py): template
`ffhq_512`, size 512x512; `forward` feeds the crop to the input named `input` and, when the graph has an
input named `weight`, `numpy.array([face_enhancer_weight]).astype(numpy.double)`: a float64 tensor of shape
(1,). The weight ranges over 0..1 (FaceFusion's `face_enhancer_weight_range`) with default 0.5; in
CodeFormer 0 restores the most and 1 keeps the most of the input face. Our option is `enhancer_weight`.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .enhancer import EnhancerOptions, FaceEnhancer

WEIGHT_INPUT = "weight"


class CodeFormerEnhancer(FaceEnhancer):
    """CodeFormer restoration with its fidelity weight.

    Several faces share one run only when the graph declares a free batch on `input` and keeps
    `weight` at (1,), one scalar for every row (FaceFusion feeds it so). The published file has batch 1
    on both; the loader's rewrite (pipeline/batch_axis.py) gives `weight` the batch axis too, a batch of
    2 weights then no longer broadcasts over the image (the stand-in's Mul fails), the probe refuses the
    rewrite, and CodeFormer runs one face per run.
    """

    def __init__(self, session: ort.InferenceSession, input_size: tuple[int, int] | None = None) -> None:
        super().__init__(session, input_size)
        weight = next((i for i in session.get_inputs() if i.name == WEIGHT_INPUT), None)
        if weight is not None and weight.shape and not isinstance(weight.shape[0], int):
            self.batched = False  # a batch axis on the weight: per-row weights the graph was not proven for

    kind = "codeformer"
    template_name = "ffhq_512"
    has_weight = True

    def feeds(self, blob: np.ndarray, options: EnhancerOptions) -> dict[str, np.ndarray]:
        feeds = {self.input_name: blob}
        if any(i.name == WEIGHT_INPUT for i in self.session.get_inputs()):
            feeds[WEIGHT_INPUT] = np.array([options.weight_value], dtype=np.float64)
        return feeds
