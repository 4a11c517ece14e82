"""What every face swapper kind shares: alignment at a pixel boost, normalisation, batched runs.

A swapper kind (inswapper, hyperswap, simswap, ghost, blendswap, uniface) differs from the others in
five facts, all class attributes or one hook here, each looked up in FaceFusion's
`facefusion/processors/modules/face_swapper/core.py` (`create_static_model_set`, `prepare_crop_frame`,
`normalize_crop_frame`, `prepare_source_embedding`, `prepare_source_frame`, `balance_source_embedding`):

- `template` and `default_input_size`: where the landmarks land in the crop, and the crop's size;
- `mean` and `std`: the target crop goes in as (RGB / 255 - mean) / std, NCHW float32;
- `denormalise_output`: whether the output comes back in that normalisation (times std plus mean:
  ghost, hyperswap, uniface) or already in 0..1 (inswapper, simswap, blendswap); either way it is
  clipped to 0..1 and turned back into BGR uint8;
- `prepare_source`: what the graph's `source` input is made of (an embedding projected or converted,
  or a face crop);
- `balance_target`: which target embedding `swapper_weight` mixes in.

The graphs name their inputs `source` and `target` (FaceFusion binds them by those names); where a
graph names them otherwise, `target` is the first input and `source` the other (insightface's order). Pixel boost (pipeline/boost.py) splits a
crop of k times the native size into k*k interleaved tiles; `swap_crops` swaps the tiles of several
faces in one run when the graph has a free batch axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np
import onnxruntime as ort

from ..align import crop
from ..batch_axis import has_free_batch
from ..boost import explode, implode
from ..errors import ModelSetInvalid
from ..faces import Face
from ..identity import SourceIdentity, balance
from ..warp_templates import template_matrix
from .base import ModelKind

if TYPE_CHECKING:
    from .converter import EmbeddingConverter

_FLOAT16 = "tensor(float16)"


class FaceSwapper(ModelKind):
    """Base of the swapper kinds: subclasses set the facts above and `prepare_source`."""

    category = "swapper"
    template: ClassVar[str] = "arcface_128"
    mean: ClassVar[tuple[float, float, float]] = (0.0, 0.0, 0.0)
    std: ClassVar[tuple[float, float, float]] = (1.0, 1.0, 1.0)
    denormalise_output: ClassVar[bool] = False
    needs_converter: ClassVar[bool] = False  # simswap, ghost: the embedding goes through a converter model
    takes_embedding: ClassVar[bool] = True  # False: the source is a face crop and swapper_weight does nothing
    balance_target: ClassVar[str] = "norm"  # the target embedding swapper_weight mixes in: norm or raw

    def __init__(self, session: ort.InferenceSession, input_size: tuple[int, int] | None = None) -> None:
        self.session = session
        self.input_size = (input_size or self.default_input_size)[0]
        inputs = session.get_inputs()
        by_name = {i.name: i for i in inputs}
        target = by_name.get("target", inputs[0])  # else insightface's convention: target first
        source = by_name.get("source") or next(i for i in inputs if i is not target)
        self.target_name, self.source_name = target.name, source.name
        self.target_half, self.source_half = target.type == _FLOAT16, source.type == _FLOAT16
        self.output_name = session.get_outputs()[0].name
        self.batched = has_free_batch([target])  # a named or free batch axis (a fixed 4 is not one)
        self.converter: EmbeddingConverter | None = None
        # output -> levels: 255 * (out * std + mean) for the denormalising kinds, 255 * out for the others
        std, mean = (np.asarray(self.std), np.asarray(self.mean)) if self.denormalise_output else (np.ones(3), np.zeros(3))
        self._out_scale = (255.0 * std).astype(np.float32).reshape(1, 3, 1, 1)
        self._out_offset = (255.0 * mean + 1e-3).astype(np.float32).reshape(1, 3, 1, 1)

    # -- the target crop --------------------------------------------------------------------------
    def align(self, image: np.ndarray, face: Face, boost: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The target face aligned at `boost` times the native size: (BGR crop, frame->crop matrix)."""
        matrix = template_matrix(face.kps, self.template, self.input_size)
        matrix[:, :] *= boost  # the native framing scaled: the same face at every boost
        return crop(image, matrix, self.input_size * boost), matrix

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        """n BGR uint8 crops (n x s x s x 3) -> the graph's target blob (n x 3 x s x s)."""
        size = crops.shape[1]
        # OpenCV subtracts the mean (RGB order once swapped) and scales in one pass: (x - 255 m) / 255
        blob = cv2.dnn.blobFromImages(list(crops), 1.0 / 255.0, (size, size), tuple(255.0 * m for m in self.mean),
                                      swapRB=True)
        if any(s != 1.0 for s in self.std):
            blob *= (1.0 / np.asarray(self.std, np.float32)).reshape(1, 3, 1, 1)
        return blob

    def denormalise(self, pred: np.ndarray) -> np.ndarray:
        """The graph's output (n x 3 x s x s) -> n BGR uint8 crops.

        Levels are truncated, as insightface and FaceFusion do, after adding 1/1000 of a level: a value
        that is level k in exact arithmetic but k - 1e-5 after float32 normalise/denormalise stays k.
        """
        # in NCHW, so the float work runs on contiguous planes and the transpose moves bytes
        levels = pred * self._out_scale  # float32 (a float16 output is promoted)
        levels += self._out_offset
        np.clip(levels, 0.0, 255.0, out=levels)
        return np.ascontiguousarray(levels.astype(np.uint8)[:, ::-1].transpose(0, 2, 3, 1))

    # -- the source -------------------------------------------------------------------------------
    def prepare_source(self, identity: SourceIdentity) -> np.ndarray:
        """The graph's `source` input for this identity, with a batch axis of 1."""
        raise NotImplementedError

    def balance_source(self, source: np.ndarray, target_raw: np.ndarray, weight: float) -> np.ndarray:
        """One source row per target face, moved toward that face by `swapper_weight` (identity.balance).

        `target_raw`: the target faces' raw recogniser outputs (n x 512). A kind that takes a face crop
        is given back its source unchanged, as FaceFusion does.
        """
        if not self.takes_embedding or weight == 0.5:
            return source
        target = target_raw.reshape(len(target_raw), -1).astype(np.float32)
        if self.balance_target == "norm":
            target = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
        return balance(source, target, weight)

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """The embedding through this swapper's converter model (simswap, ghost)."""
        if self.converter is None:
            raise ModelSetInvalid(f"the {self.kind} swapper has no embedding converter")
        return self.converter.convert(raw.reshape(1, -1))

    # -- running ----------------------------------------------------------------------------------
    def _run(self, blob: np.ndarray, sources: np.ndarray) -> np.ndarray:
        feed = {self.target_name: blob.astype(np.float16) if self.target_half else blob,
                self.source_name: sources.astype(np.float16) if self.source_half else sources.astype(np.float32)}
        return self.session.run([self.output_name], feed)[0]

    def swap_aligned(self, crops: np.ndarray, source: np.ndarray) -> np.ndarray:
        """Swap n aligned BGR crops (n x s x s x 3, uint8); `source` has 1 row for all or n rows, one each.

        One run when the graph has a free batch axis, else one run per crop.
        """
        blob = self.normalise(crops)
        sources = source if len(source) == len(blob) else np.repeat(source[:1], len(blob), axis=0)
        if self.batched or len(blob) == 1:
            pred = self._run(blob, sources)
        else:
            pred = np.concatenate([self._run(blob[i:i + 1], sources[i:i + 1]) for i in range(len(blob))])
        return self.denormalise(pred)

    def swap_crop(self, aligned: np.ndarray, source: np.ndarray, boost: int = 1) -> np.ndarray:
        """Swap one aligned crop of `boost` times the native size, tile by interleaved tile."""
        return self.swap_crops([aligned], source[:1], boost)[0]

    def swap_crops(self, aligned: Sequence[np.ndarray], source: np.ndarray, boost: int = 1) -> list[np.ndarray]:
        """Swap several faces' crops (each `boost` times the native size) in as few runs as the graph allows.

        `source`: 1 row shared by every face, or one row per face (swapper_weight balances per face).
        All tiles of all faces go through `swap_aligned` together: one run with a free batch axis.
        """
        if not aligned:
            return []
        per = boost * boost
        tiles = np.concatenate([implode(c, boost) if boost > 1 else c[None] for c in aligned])
        per_face = len(source) == len(aligned) and len(aligned) > 1
        out = self.swap_aligned(tiles, np.repeat(source, per, axis=0) if per_face else source[:1])
        if boost == 1:
            return list(out)
        return [explode(out[i * per:(i + 1) * per], boost) for i in range(len(aligned))]

    def swap(self, image: np.ndarray, face: Face, source: np.ndarray, boost: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Returns (swapped BGR crop, frame->crop matrix)."""
        aligned, matrix = self.align(image, face, boost)
        return self.swap_crop(aligned, source, boost), matrix


def converter_role(role: str) -> str:
    """The manifest role of the embedding converter serving swapper role `role`: `embedding_converter`
    for `swapper`, `<role>_embedding_converter` for an extra swapper role."""
    return "embedding_converter" if role == "swapper" else f"{role}_embedding_converter"


def missing_converters(kinds: dict[str, type[ModelKind]]) -> list[str]:
    """What a model set lacks for its swappers, by role (the manifest check: before any file is read)."""
    return [f"role {role!r} ({cls.kind}) needs an embedding converter in role {converter_role(role)!r}"
            for role, cls in kinds.items() if issubclass(cls, FaceSwapper) and cls.needs_converter
            and getattr(kinds.get(converter_role(role)), "category", None) != "embedding_converter"]


def swapper_roles(models: dict[str, ModelKind]) -> dict[str, FaceSwapper]:
    """The loaded swappers by role, each linked to its embedding converter where its kind needs one.

    ModelSetInvalid naming the missing role when a simswap or ghost swapper has no converter.
    """
    from .converter import EmbeddingConverter

    swappers = {role: model for role, model in models.items() if isinstance(model, FaceSwapper)}
    for role, swapper in swappers.items():
        if swapper.needs_converter:
            converter = models.get(converter_role(role))
            if not isinstance(converter, EmbeddingConverter):
                raise ModelSetInvalid(f"the {swapper.kind} swapper of role {role!r} needs an embedding converter "
                                      f"in role {converter_role(role)!r}")
            swapper.converter = converter
    return swappers
