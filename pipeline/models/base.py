"""What every model kind provides, so the loader and the fusion core never name a kind.

A kind is one model family with its own pre- and post-processing (SCRFD, ArcFace, inswapper, GFPGAN,
and the swappers, enhancers and maskers to come). It serves one role category (`detector`,
`recognizer`, `swapper`, `enhancer`), declares its default input size, may build derived artefacts
ahead of serving (`prepare`), and wraps a ready inference session (`create`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import onnxruntime as ort

if TYPE_CHECKING:  # the manifest module imports this package's table; hints only, no import cycle
    from ..manifest import ModelEntry


class ModelKind:
    """Base of the per-kind classes registered in `pipeline.models.KINDS`."""

    kind: ClassVar[str]
    category: ClassVar[str]
    default_input_size: ClassVar[tuple[int, int]]

    @classmethod
    def prepare(cls, entry: ModelEntry, cache_dir: Path) -> list[str]:
        """Build this kind's derived artefacts (besides the optimised graph); returns what was built."""
        return []

    @classmethod
    def create(cls, session: ort.InferenceSession, entry: ModelEntry, cache_dir: Path) -> ModelKind:
        """Wrap a created session; artefacts from `prepare` are read here (and built if missing)."""
        return cls(session, input_size=entry.input_size or cls.default_input_size)  # type: ignore[call-arg]
