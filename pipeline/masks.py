"""Which pixels of a swapped face crop reach the frame: the box, occlusion and region masks.

Masks are combined as their element-wise minimum (a pixel is swapped only as far as every mask lets
it), as FaceFusion's face_masker does:

- `box`: the feathered box of insightface's paste back (the crop's square, eroded and blurred in the
  frame), with `mask_padding` (top, right, bottom, left, in percent of the crop) cut off its edges and
  `mask_blur` setting the feather. `mask_blur` 0.3, the default, is exactly insightface's feather: an
  erosion of a tenth and a blur of a twentieth of the face's size; 0 is a hard edge, 1 a feather over
  a third of the face.
- `occlusion`: an XSeg-style occluder's mask of the target crop (1 where the face is visible), so hair,
  hands or glasses in front of the face keep their pixels.
- `region`: a BiSeNet-style face parser's classes of the swapped crop; only the chosen regions swap.

Occlusion and region masks are made in crop space and smoothed as FaceFusion smooths them (a Gaussian
of sigma 5 crop pixels, then only its upper half kept: `(clip(m, 0.5, 1) - 0.5) * 2`), so a pixel well
inside an occluder gets exactly 0 and keeps its original value; paste back warps them into the face's
region of the frame with the crop itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import InvalidOptions

MASK_TYPES = ("box", "occlusion", "region")
# BiSeNet face-parsing class indices (CelebAMask-HQ labels) of the regions a caller may choose,
# with FaceFusion's names (facefusion/choices.py, face_mask_region_set).
REGIONS: dict[str, int] = {
    "skin": 1,
    "left-eyebrow": 2,
    "right-eyebrow": 3,
    "left-eye": 4,
    "right-eye": 5,
    "glasses": 6,
    "nose": 10,
    "mouth": 11,
    "upper-lip": 12,
    "lower-lip": 13,
}
DEFAULT_MASK_BLUR = 0.3
SMOOTH_SIGMA = 5.0


@dataclass(frozen=True)
class MaskOptions:
    """The masks of a fusion; checked on construction (InvalidOptions names the option)."""

    types: tuple[str, ...] = ("box",)
    blur: float = DEFAULT_MASK_BLUR
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    regions: tuple[str, ...] = field(default_factory=lambda: tuple(REGIONS))

    def __post_init__(self) -> None:
        types = tuple(dict.fromkeys(self.types))
        unknown = [t for t in types if t not in MASK_TYPES]
        if not types or unknown:
            raise InvalidOptions(f"mask must name one or more of {', '.join(MASK_TYPES)}, got {list(self.types)!r}")
        object.__setattr__(self, "types", types)
        if isinstance(self.blur, bool) or not isinstance(self.blur, (int, float)) or not 0 <= self.blur <= 1:
            raise InvalidOptions(f"mask_blur must be between 0 and 1, got {self.blur!r}")
        padding = tuple(self.padding)
        if len(padding) != 4 or any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 100 for p in padding):
            raise InvalidOptions(f"mask_padding must be four whole percentages 0-100 (top, right, bottom, left), "
                                 f"got {self.padding!r}")
        object.__setattr__(self, "padding", padding)
        regions = tuple(dict.fromkeys(self.regions))
        unknown = [r for r in regions if r not in REGIONS]
        if not regions or unknown:
            raise InvalidOptions(f"mask_regions must name one or more of {', '.join(REGIONS)}, got {list(self.regions)!r}")
        object.__setattr__(self, "regions", regions)

    @property
    def box(self) -> bool:
        return "box" in self.types

    @property
    def default(self) -> bool:
        """Exactly today's (insightface's) paste-back mask."""
        return self.types == ("box",) and self.blur == DEFAULT_MASK_BLUR and self.padding == (0, 0, 0, 0)


DEFAULT_MASKS = MaskOptions()


def feather_kernels(size: int, blur: float) -> tuple[int, int]:
    """(erosion kernel, blur half-width) of the box's feather for a face `size` pixels across.

    In whole thousandths so that mask_blur 0.3 gives insightface's max(size//10, 10) and
    max(size//20, 5) exactly; 0 gives neither erosion nor blur.
    """
    milli = round(blur * 1000)
    return max(size * milli // 3000, milli // 30), max(size * milli // 6000, milli // 60)


def box_square(size: int, padding: tuple[int, int, int, int]) -> np.ndarray:
    """The crop's square (255 inside) with `padding` percent cut off its top, right, bottom and left."""
    square = np.full((size, size), 255, dtype=np.float32)
    top, right, bottom, left = (size * p // 100 for p in padding)
    if top:
        square[:top] = 0
    if bottom:
        square[size - bottom:] = 0
    if left:
        square[:, :left] = 0
    if right:
        square[:, size - right:] = 0
    return square


def smooth(mask: np.ndarray) -> np.ndarray:
    """FaceFusion's smoothing of a model's mask: blur, then keep the upper half stretched to 0..1."""
    blurred = cv2.GaussianBlur(np.clip(mask, 0, 1).astype(np.float32), (0, 0), SMOOTH_SIGMA)
    return (np.clip(blurred, 0.5, 1) - 0.5) * 2


def occlusion_mask(raw: np.ndarray, size: int) -> np.ndarray:
    """An occluder's output (H x W, 1 = visible face) as a smoothed size x size crop mask."""
    return smooth(cv2.resize(np.clip(raw, 0, 1).astype(np.float32), (size, size)))


def region_mask(classes: np.ndarray, regions: tuple[str, ...], size: int) -> np.ndarray:
    """A face parser's class map as a smoothed size x size crop mask of the chosen regions."""
    chosen = np.isin(classes, [REGIONS[r] for r in regions]).astype(np.float32)
    return smooth(cv2.resize(chosen, (size, size)))


def mask_options(types: tuple[str, ...] | None = None, blur: float | None = None,
                 padding: tuple[int, int, int, int] | None = None, regions: tuple[str, ...] | None = None,
                 accepted: bool = False) -> MaskOptions:
    """MaskOptions from the options a caller gave (None: not given); an option for a mask that is not
    asked for is refused rather than ignored (mask_regions without region, mask_blur or mask_padding
    without box), and so is a mask_padding that leaves nothing of the swap to show. `accepted`: a
    stored video job's options, which the last rule, added since, must not fail halfway."""
    types = tuple(types) if types is not None else DEFAULT_MASKS.types
    if regions is not None and "region" not in types:
        raise InvalidOptions("mask_regions applies to the region mask only: add region to mask")
    for name, value in (("mask_blur", blur), ("mask_padding", padding)):
        if value is not None and "box" not in types:
            raise InvalidOptions(f"{name} applies to the box mask only: add box to mask")
    masks = MaskOptions(types=types, blur=DEFAULT_MASK_BLUR if blur is None else blur,
                        padding=DEFAULT_MASKS.padding if padding is None else tuple(padding),  # type: ignore[arg-type]
                        regions=DEFAULT_MASKS.regions if regions is None else tuple(regions))
    top, right, bottom, left = masks.padding  # checked by MaskOptions: four whole percentages
    if not accepted and (top + bottom >= 100 or left + right >= 100):
        raise InvalidOptions(f"mask_padding cuts away the whole face: top + bottom and left + right must each "
                             f"stay below 100, got {list(masks.padding)!r}")
    return masks
