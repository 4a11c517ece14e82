"""inswapper_128: swap the identity of an aligned 128x128 target crop.

The swapper projects the source embedding through its `emap` matrix, which is stored as the graph's
last initializer. insightface parses the whole 554 MB model a second time just to read it; we read it
once into a `.npy` side file keyed by the model's SHA-256 and load only that on later starts.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from ..files import atomic_write
from ..identity import SourceIdentity
from .swapper import FaceSwapper

if TYPE_CHECKING:
    from ..manifest import ModelEntry

log = logging.getLogger(__name__)


def emap_side_file(cache_dir: Path, model_sha256: str) -> Path:
    return cache_dir / "emap" / f"{model_sha256[:32]}.npy"


def extract_emap(model_path: Path) -> np.ndarray:
    """Read the last initializer of the swapper graph (the one-time, expensive path)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    tensor = model.graph.initializer[-1]
    matrix = numpy_helper.to_array(tensor, base_dir=str(model_path.parent))
    if matrix.shape != (512, 512):
        raise ValueError(f"{model_path}: last initializer has shape {matrix.shape}, expected the 512x512 emap")
    return matrix.astype(np.float32)


def load_emap(model_path: Path, model_sha256: str, cache_dir: Path) -> tuple[np.ndarray, bool]:
    """The emap matrix from its side file, building the side file first if needed.

    Returns (matrix, built): `built` tells the caller that the slow path ran, so it can say so in logs.
    """
    side = emap_side_file(cache_dir, model_sha256)
    try:
        return np.load(side, allow_pickle=False), False
    except (OSError, ValueError):
        pass
    matrix = extract_emap(model_path)
    try:
        side.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, matrix, allow_pickle=False)
        atomic_write(side, buffer.getvalue())
        log.info("built the swapper's emap side file %s", side)
    except OSError as exc:
        log.warning("could not write the emap side file %s: %s", side, exc)
    return matrix, True


class InSwapper(FaceSwapper):
    """inswapper_128 (and its fp16 file, the same kind): arcface_128 template, 128 pixels, RGB in 0..1
    (mean 0, std 1), output in 0..1; the source is the embedding projected through the emap.

    insightface's `INSwapper.get` normalises the projected latent; FaceFusion divides by the embedding's
    norm instead. Only the latent's direction differs from neither, so we keep insightface's (the
    model author's) form. The published graph has a fixed batch of 1.
    """

    kind = "inswapper"
    default_input_size = (128, 128)
    template = "arcface_128"

    @classmethod
    def prepare(cls, entry: ModelEntry, cache_dir: Path) -> list[str]:
        if emap_side_file(cache_dir, entry.sha256).is_file():  # `create` loads it; no need to read it twice
            return []
        _, built = load_emap(entry.path, entry.sha256, cache_dir)
        return [f"emap side file for {entry.path.name}"] if built else []

    @classmethod
    def create(cls, session: ort.InferenceSession, entry: ModelEntry, cache_dir: Path) -> InSwapper:
        emap, _ = load_emap(entry.path, entry.sha256, cache_dir)
        return cls(session, emap, input_size=entry.input_size or cls.default_input_size)

    def __init__(self, session: ort.InferenceSession, emap: np.ndarray, input_size: tuple[int, int] = (128, 128)):
        super().__init__(session, input_size)
        self.emap = emap

    def latent(self, embedding: np.ndarray) -> np.ndarray:
        """The embedding through the emap, normalised (1 x 512); any scale of `embedding` gives the same."""
        latent = embedding.reshape(1, -1).astype(np.float32) @ self.emap
        return (latent / np.linalg.norm(latent)).astype(np.float32)

    def prepare_source(self, identity: SourceIdentity) -> np.ndarray:
        return self.latent(identity.embedding)
