"""What every model kind provides, so the loader and the fusion core never name a kind.

A kind is one model family with its own pre- and post-processing (SCRFD, ArcFace, inswapper, GFPGAN,
and the swappers, enhancers and maskers to come). It serves one role category (`detector`,
`recognizer`, `swapper`, `enhancer`), declares its default input size, may build derived artefacts
ahead of serving (`prepare`), and wraps a ready inference session (`create`). A kind that normalises
whole images may declare how (`pixel_format`): its prepared graph then takes the uint8 image itself
(pipeline/pixel_input.py), which saves CPU per request and host-to-device bytes on GPU pods.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np
import onnxruntime as ort

from ..pixel_input import PixelFormat

if TYPE_CHECKING:  # the manifest module imports this package's table; hints only, no import cycle
    from ..manifest import ModelEntry


class ModelKind:
    """Base of the per-kind classes registered in `pipeline.models.KINDS`."""

    kind: ClassVar[str]
    category: ClassVar[str]
    default_input_size: ClassVar[tuple[int, int]]
    # The normalisation of the kind's float image input, declared when the kind feeds whole images that
    # the graph may take as uint8 pixels instead (the graph preparation proves it; see pixel_input.py).
    # None: the graph is prepared with its float input.
    pixel_format: ClassVar[PixelFormat | None] = None
    # Whether one request's run holds several rows (the faces of a frame): then the prepared graph gets a
    # free batch axis (BATCH_MAX > 1). A kind whose runs hold one image per request (a detector) gets one
    # only when runs are merged across requests (BATCH_WAIT_MS > 0): otherwise the rewrite only costs
    # (SCRFD at batch 1 on the H200: 2.59 ms with the axis against 2.09 ms as published).
    rows_per_request: ClassVar[bool] = True
    # Whether MODEL_FP16=auto converts this kind's graph (when it stays within tolerance). False where
    # half precision measured slower (SCRFD at batch 1: 2.48 against 2.22 ms on the H100, 3.21 against
    # 2.59 ms on the H200); MODEL_FP16=on still converts it.
    fp16_pays: ClassVar[bool] = True

    @classmethod
    def prepare(cls, entry: ModelEntry, cache_dir: Path) -> list[str]:
        """Build this kind's derived artefacts (besides the optimised graph); returns what was built."""
        return []

    @classmethod
    def create(cls, session: ort.InferenceSession, entry: ModelEntry, cache_dir: Path) -> ModelKind:
        """Wrap a created session; artefacts from `prepare` are read here (and built if missing)."""
        return cls(session, input_size=entry.input_size or cls.default_input_size)  # type: ignore[call-arg]

    def __init__(self, session: ort.InferenceSession, input_size: tuple[int, int] | None = None) -> None:
        """The usual single-input, single-output model on a square input (kinds with more inputs or
        outputs, or a rectangular input, keep their own)."""
        self.session = session
        self.input_size = (input_size or self.default_input_size)[0]
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def run(self, blob: np.ndarray) -> np.ndarray:
        """The model's one output for one input blob."""
        return self.session.run([self.output_name], {self.input_name: blob})[0]

    def fit(self, crop: np.ndarray) -> np.ndarray:
        """A square crop of any size at the model's input size."""
        size = self.input_size
        return crop if crop.shape[0] == size else cv2.resize(crop, (size, size))
