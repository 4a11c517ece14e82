"""What every face enhancer shares: alignment, normalisation, the run, paste back and the blend.

The enhancer kinds (`gfpgan`, `codeformer`, `gpen`, `restoreformer++`, one small module each) differ only
in their template, their input size and, for CodeFormer, a fidelity `weight` input; everything else is
FaceFusion's `face_enhancer` processor (facefusion/processors/modules/face_enhancer/core.py, 3.x), which
this base follows step by step:

- the face is warped onto the kind's landmark template scaled to the input size (`ffhq_512`, or
  `arcface_128` for gpen_bfr_256), borders replicated (`warp_face_by_face_landmark_5`);
- the crop is normalised as `prepare_crop_frame` does: RGB, `/ 255`, `(x - 0.5) / 0.5`, NCHW float32, fed
  to the input named `input` (the graph's first input);
- the output is denormalised as `normalize_crop_frame` does: clip to [-1, 1], `(x + 1) / 2 * 255`, rounded,
  back to BGR;
- it is pasted back with a box mask (the request's `mask_blur`, no padding) and, when the request asks
  for `occlusion`, the occluder's mask of the enhancer's crop, as the minimum;
- the pasted frame is blended with the swapped one: `enhancer_blend` b in 0..100 gives
  `swapped * (1 - b/100) + enhanced * (b/100)` (`blend_paste_frame` with `cv2.addWeighted`); FaceFusion's
  default is 80.

Several faces of a frame (`enhance_many_into`) go through the graph together when it has a free batch
axis (pipeline/batch_axis.py), at most `batch_max` rows a run, and give the image the face-by-face loop
gives. That loop, like FaceFusion's, aligns each face from the frame as the earlier faces' pastes left it,
so a face whose region (crop footprint plus feather, `paste_region`) meets an earlier face's waits for a
later run: faces are grouped in waves, a face's wave one past the latest wave of an earlier face it
overlaps. Faces of one wave are pairwise disjoint, so reading them all before pasting any changes
nothing, and neither does pasting a disjoint later face before an earlier one. Crowded photographs
chain: the 29 faces of the Solvay photograph take 11 waves at the stand-in's 512 crop, not 29 runs.

`EnhancerOptions` carries the request's choice (`enhancer`: which role of the set, default `enhancer`),
blend and weight; `pick_enhancer` resolves the role against the loaded set, so a role the set lacks is an
InvalidOptions naming the option, as a mask without its model is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np
import onnxruntime as ort

from ..align import FFHQ_512_TEMPLATE, template_for, umeyama_similarity
from ..batch_axis import has_free_batch
from ..errors import InvalidOptions, ModelSetInvalid
from ..faces import Face
from ..masks import MaskOptions
from ..paste import disjoint_waves, paste_back, paste_region
from .base import ModelKind
from .xseg import FaceOccluder

if TYPE_CHECKING:
    from ..manifest import ModelEntry

IMAGE_INPUT = "input"  # the name FaceFusion's face_enhancer `forward` feeds the crop to
DEFAULT_ENHANCER_ROLE = "enhancer"
DEFAULT_ENHANCER_BLEND = 80  # FaceFusion's --face-enhancer-blend default (range 0..100)
DEFAULT_ENHANCER_WEIGHT = 0.5  # FaceFusion's --face-enhancer-weight default (range 0..1)

# FaceFusion's WARP_TEMPLATES (facefusion/face_helper.py), normalised to a unit crop: `ffhq_512` is
# facexlib's FFHQ template / 512 and `arcface_128` insightface's 128-pixel ArcFace template / 128.
TEMPLATES: dict[str, np.ndarray] = {
    "ffhq_512": FFHQ_512_TEMPLATE / 512.0,
    "arcface_128": template_for(128) / 128.0,
}


@dataclass(frozen=True)
class EnhancerOptions:
    """The request's enhancer choice; None means not given (the defaults apply, and the option may only
    be given with `enhance`, as `mask_blur` only with the box)."""

    role: str | None = None
    blend: int | None = None
    weight: float | None = None

    def __post_init__(self) -> None:
        if self.role is not None and (not isinstance(self.role, str) or not self.role):
            raise InvalidOptions(f"enhancer must name a role of the model set, got {self.role!r}")
        if self.blend is not None and (isinstance(self.blend, bool) or not isinstance(self.blend, int)
                                       or not 0 <= self.blend <= 100):
            raise InvalidOptions(f"enhancer_blend must be a whole percentage between 0 and 100, got {self.blend!r}")
        if self.weight is not None and (isinstance(self.weight, bool) or not isinstance(self.weight, (int, float))
                                        or not 0.0 <= float(self.weight) <= 1.0):
            raise InvalidOptions(f"enhancer_weight must be between 0 and 1, got {self.weight!r}")

    @property
    def given(self) -> list[str]:
        """The options of this group the request gave, by their option names."""
        names = (("enhancer", self.role), ("enhancer_blend", self.blend), ("enhancer_weight", self.weight))
        return [name for name, value in names if value is not None]

    @property
    def role_name(self) -> str:
        return self.role if self.role is not None else DEFAULT_ENHANCER_ROLE

    @property
    def blend_percent(self) -> int:
        return self.blend if self.blend is not None else DEFAULT_ENHANCER_BLEND

    @property
    def weight_value(self) -> float:
        return float(self.weight) if self.weight is not None else DEFAULT_ENHANCER_WEIGHT


DEFAULT_ENHANCER_OPTIONS = EnhancerOptions()


def _square_size(session: ort.InferenceSession) -> int | None:
    """The input's height when the graph fixes it (NCHW, square), else None."""
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
        return shape[2]
    return None


class FaceEnhancer(ModelKind):
    """Base of the enhancer kinds: restore a face aligned on the kind's template, paste it, blend it."""

    category = "enhancer"
    default_input_size = (512, 512)
    template_name: ClassVar[str] = "ffhq_512"
    has_weight: ClassVar[bool] = False  # a fidelity `weight` input (CodeFormer)

    @classmethod
    def create(cls, session: ort.InferenceSession, entry: ModelEntry, cache_dir: Path) -> FaceEnhancer:
        """The input size is the manifest's, else the graph's own; a manifest that contradicts the
        graph is refused by file name (one kind serves files of several sizes: gpen_bfr_256..2048)."""
        fixed = _square_size(session)
        size = entry.input_size or ((fixed, fixed) if fixed else cls.default_input_size)
        if fixed is not None and size[0] != fixed:
            raise ModelSetInvalid(f"{entry.path.name} ({entry.role}): the manifest's input_size {list(size)} "
                                  f"does not match the model's {fixed}x{fixed} input")
        return cls(session, size)

    def __init__(self, session: ort.InferenceSession, input_size: tuple[int, int] | None = None) -> None:
        super().__init__(session, input_size)
        names = [i.name for i in session.get_inputs()]
        self.input_name = IMAGE_INPUT if IMAGE_INPUT in names else names[0]  # FaceFusion feeds inputs by name
        self.template = TEMPLATES[self.template_for_size(self.input_size)] * self.input_size
        # a named or free batch axis on the image input, as the swapper's (a fixed 4 is not one)
        self.batched = has_free_batch([i for i in session.get_inputs() if i.name == self.input_name])

    @classmethod
    def template_for_size(cls, size: int) -> str:
        return cls.template_name

    # -- the steps, each FaceFusion's ----------------------------------------------------------------
    def align(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """(BGR crop at the input size, frame->crop matrix): the face on the kind's template."""
        matrix = umeyama_similarity(face.kps, self.template)
        size = (self.input_size, self.input_size)
        crop = cv2.warpAffine(image, matrix, size, borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_AREA)
        return crop, matrix

    @staticmethod
    def normalise(crop: np.ndarray) -> np.ndarray:
        """BGR uint8 HxWx3 -> 1x3xHxW float32 RGB in [-1, 1]."""
        rgb = crop[:, :, ::-1].astype(np.float32) / 255.0
        return np.ascontiguousarray(((rgb - 0.5) / 0.5).transpose(2, 0, 1)[None])

    @staticmethod
    def denormalise(output: np.ndarray) -> np.ndarray:
        """1x3xHxW (or 3xHxW) in [-1, 1] -> BGR uint8 HxWx3, clipped and rounded."""
        chw = output[0] if output.ndim == 4 else output
        rgb = ((np.clip(chw, -1.0, 1.0) + 1.0) / 2.0).transpose(1, 2, 0) * 255.0
        return np.ascontiguousarray(rgb.round().astype(np.uint8)[:, :, ::-1])

    def feeds(self, blob: np.ndarray, options: EnhancerOptions) -> dict[str, np.ndarray]:
        """The graph's inputs for one normalised crop (kinds with more inputs add theirs)."""
        return {self.input_name: blob}

    def restore(self, crop: np.ndarray, options: EnhancerOptions = DEFAULT_ENHANCER_OPTIONS) -> np.ndarray:
        """One aligned BGR crop at the input size, restored."""
        return self.restore_many([crop], options)[0]

    def restore_many(self, crops: Sequence[np.ndarray], options: EnhancerOptions = DEFAULT_ENHANCER_OPTIONS,
                     batch_max: int = 1) -> list[np.ndarray]:
        """Aligned BGR crops restored: runs of at most `batch_max` rows when the graph has a free batch
        axis, else one run per crop."""
        per_run = max(1, batch_max) if self.batched else 1
        restored: list[np.ndarray] = []
        for start in range(0, len(crops), per_run):
            chunk = crops[start:start + per_run]
            blob = np.concatenate([self.normalise(c) for c in chunk])
            output = self.session.run([self.output_name], self.feeds(blob, options))[0]
            restored += [self.denormalise(row) for row in output]
        return restored

    def enhance(self, image: np.ndarray, face: Face,
                options: EnhancerOptions = DEFAULT_ENHANCER_OPTIONS) -> tuple[np.ndarray, np.ndarray]:
        """(restored BGR crop, frame->crop matrix), for paste back."""
        crop, matrix = self.align(image, face)
        return self.restore(crop, options), matrix

    def enhance_into(self, frame: np.ndarray, face: Face, options: EnhancerOptions = DEFAULT_ENHANCER_OPTIONS,
                     masks: MaskOptions | None = None, occluder: FaceOccluder | None = None) -> None:
        """Restore `face` of `frame` and blend it in, in place, touching only the face's region."""
        crop, matrix = self.align(frame, face)
        self._blend_in(frame, crop, self.restore(crop, options), matrix, options, masks, occluder)

    def enhance_many_into(self, frame: np.ndarray, faces: Sequence[Face],
                          options: EnhancerOptions = DEFAULT_ENHANCER_OPTIONS, masks: MaskOptions | None = None,
                          occluder: FaceOccluder | None = None, batch_max: int = 1) -> int:
        """`enhance_into` for each face in order, with the faces of each wave (module docstring) restored
        together in runs of at most `batch_max`; the same image. Returns the number of waves."""
        if not self.batched or batch_max <= 1 or len(faces) <= 1:
            for face in faces:
                self.enhance_into(frame, face, options, masks, occluder)
            return len(faces)
        waves = self.waves(frame.shape, faces, masks)
        for wave in waves:
            aligned = [self.align(frame, faces[i]) for i in wave]
            restored = self.restore_many([c for c, _ in aligned], options, batch_max)
            for (crop, matrix), out in zip(aligned, restored, strict=True):
                self._blend_in(frame, crop, out, matrix, options, masks, occluder)
        return len(waves)

    def waves(self, frame_shape: tuple[int, ...], faces: Sequence[Face],
              masks: MaskOptions | None = None) -> list[list[int]]:
        """Face indices grouped so that each group can be read at once and pasted in order with the
        result of the face-by-face loop: a face goes one wave past the latest earlier face whose paste
        region meets its own."""
        box = self._box(masks)
        return disjoint_waves([paste_region(umeyama_similarity(face.kps, self.template), self.input_size, frame_shape, box)
                               for face in faces])

    @staticmethod
    def _box(masks: MaskOptions | None) -> MaskOptions:
        """The enhancer's paste mask: the box with the request's feather, whatever masks the swap used."""
        return MaskOptions(types=("box",), blur=masks.blur if masks is not None and masks.box else MaskOptions().blur)

    def _blend_in(self, frame: np.ndarray, crop: np.ndarray, restored: np.ndarray, matrix: np.ndarray,
                  options: EnhancerOptions, masks: MaskOptions | None, occluder: FaceOccluder | None) -> None:
        """Paste one restored crop into `frame` and blend it with what was there (FaceFusion's steps)."""
        box = self._box(masks)
        crop_masks: Sequence[np.ndarray] = ()
        if masks is not None and "occlusion" in masks.types and occluder is not None:
            crop_masks = (occluder.occlusion(crop),)
        blend = options.blend_percent / 100.0
        if blend >= 1.0:
            paste_back(frame, restored, matrix, box, crop_masks)
            return
        region = paste_region(matrix, restored.shape[0], frame.shape, box)  # what paste_back may touch
        if region is None:
            return
        x0, y0, x1, y1 = region
        before = frame[y0:y1, x0:x1].copy()  # not the whole frame: 19.5 MB a face on the Solvay photo
        if paste_back(frame, restored, matrix, box, crop_masks) is None:
            return
        frame[y0:y1, x0:x1] = cv2.addWeighted(before, 1.0 - blend, frame[y0:y1, x0:x1], blend, 0)



def enhancer_roles(models: Mapping[str, ModelKind]) -> dict[str, FaceEnhancer]:
    """The set's roles that hold an enhancer, by role name."""
    return {role: model for role, model in models.items() if isinstance(model, FaceEnhancer)}


def pick_enhancer(models: Mapping[str, ModelKind], options: EnhancerOptions) -> FaceEnhancer:
    """The enhancer the request names (`enhancer`, default role `enhancer`); InvalidOptions naming the
    option for a role the set lacks, a role that is not an enhancer, or a weight it has no input for."""
    role = options.role_name
    roles = enhancer_roles(models)
    enhancer = roles.get(role)
    if enhancer is None:
        offered = f"its enhancer roles are {', '.join(sorted(roles))}" if roles else "it has no enhancer"
        if role not in models and options.role is None:
            raise InvalidOptions(f"enhance was requested but this model set has no enhancer role ({offered})")
        what = f"is the set's {models[role].category}, not an enhancer" if role in models else (
            "is not a role of this model set")
        raise InvalidOptions(f"enhancer {role!r} {what} ({offered})")
    if options.weight is not None and not enhancer.has_weight:
        raise InvalidOptions(f"enhancer_weight applies to an enhancer with a fidelity weight input (codeformer); "
                             f"enhancer {role!r} is {enhancer.kind}")
    return enhancer
