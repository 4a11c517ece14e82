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

import cv2
import numpy as np
import onnxruntime as ort

from ..align import crop, estimate_norm
from ..boost import explode, implode
from ..faces import Face
from ..files import atomic_write
from .base import ModelKind

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


class InSwapper(ModelKind):
    """Runs inswapper_128 on one face at a time (the published model has a fixed batch of 1).

    With a pixel boost of k (pipeline/boost.py) the face is aligned at k times the native size and its
    k*k interleaved tiles are swapped: in one run when the graph has a free batch axis, else one by one.
    """

    kind = "inswapper"
    category = "swapper"
    default_input_size = (128, 128)

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
        self.session = session
        self.emap = emap
        self.input_size = input_size[0]
        inputs = session.get_inputs()
        self.target_name = inputs[0].name
        self.source_name = inputs[1].name
        self.output_name = session.get_outputs()[0].name
        batch = inputs[0].shape[0] if inputs[0].shape else 1
        self.batched = not isinstance(batch, int) or batch != 1  # a named or free batch axis

    def latent(self, embedding: np.ndarray) -> np.ndarray:
        latent = embedding.reshape(1, -1) @ self.emap
        return (latent / np.linalg.norm(latent)).astype(np.float32)

    def swap_aligned(self, aligned: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """Swap n aligned BGR crops (n x size x size x 3, uint8) with one latent; same shape back."""
        size = self.input_size
        blob = cv2.dnn.blobFromImages(list(aligned), 1.0 / 255.0, (size, size), (0.0, 0.0, 0.0), swapRB=True)
        if self.batched or len(blob) == 1:
            latents = np.repeat(latent, len(blob), axis=0)
            pred = self.session.run([self.output_name], {self.target_name: blob, self.source_name: latents})[0]
        else:
            pred = np.concatenate([self.session.run([self.output_name], {self.target_name: tile[None],
                                                                         self.source_name: latent})[0]
                                   for tile in blob])
        rgb = np.clip(255 * pred.transpose(0, 2, 3, 1), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb[..., ::-1])

    def align(self, image: np.ndarray, face: Face, boost: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The target face aligned at `boost` times the native size: (BGR crop, frame->crop matrix)."""
        size = self.input_size * boost
        matrix = estimate_norm(face.kps, self.input_size)
        matrix[:, :] *= boost  # the native template scaled: the same face framing at every boost
        return crop(image, matrix, size), matrix

    def swap_crop(self, aligned: np.ndarray, latent: np.ndarray, boost: int = 1) -> np.ndarray:
        """Swap an aligned crop of `boost` times the native size, tile by interleaved tile."""
        if boost == 1:
            return self.swap_aligned(aligned[None], latent)[0]
        return explode(self.swap_aligned(implode(aligned, boost), latent), boost)

    def swap(self, image: np.ndarray, face: Face, latent: np.ndarray, boost: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Returns (swapped BGR crop, frame->crop matrix)."""
        aligned, matrix = self.align(image, face, boost)
        return self.swap_crop(aligned, latent, boost), matrix
