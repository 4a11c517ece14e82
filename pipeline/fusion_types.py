"""What a fusion is asked and what it answers: options in, report and images out.

Kept apart from the Fuser so callers (the function, the CLI) can build and read them without the
fusion machinery, and so the Fuser module holds the fusion alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .angles import DEFAULT_DETECTOR_ANGLES, check_angles
from .boost import PIXEL_BOOSTS
from .errors import InvalidOptions
from .images import DecodedImage, normalise_format
from .masks import DEFAULT_MASKS, MaskOptions
from .models.enhancer import DEFAULT_ENHANCER_OPTIONS, EnhancerOptions
from .selection import Selection


@dataclass
class FuseOptions:
    """What a caller may ask of one fusion, output encoding included.

    `reference` is the image whose face selects target faces (faces=reference), as bytes or decoded.
    `pixel_boost` is the size the face is swapped at (None: the swapper's own size; pipeline/boost.py),
    `masks` which pixels of the swapped face reach the frame (pipeline/masks.py). Format, quality, the
    boost's value and the masks are checked here, so a bad option fails before any model runs; what
    depends on the model set (a boost the swapper's size does not divide, a mask without its model) is
    checked by the Fuser before it runs one.
    """

    selection: Selection = field(default_factory=Selection)
    enhance: bool = False
    reference: bytes | DecodedImage | np.ndarray | None = None  # an embedding: computed once (video)
    output_format: str = "jpeg"
    quality: int = 92
    pixel_boost: int | None = None
    masks: MaskOptions = DEFAULT_MASKS
    swapper: str = "swapper"  # the manifest role of the swapper (pipeline/models/swapper.py)
    swapper_weight: float = 0.5  # FaceFusion's face_swapper_weight (pipeline/identity.py, `balance`)
    enhancement: EnhancerOptions = DEFAULT_ENHANCER_OPTIONS  # which enhancer role, blend, weight (with enhance)
    detector_angles: tuple[int, ...] = DEFAULT_DETECTOR_ANGLES  # rotated copies searched (pipeline/angles.py)

    def __post_init__(self) -> None:
        self.detector_angles = check_angles(self.detector_angles)
        if self.enhancement.given and not self.enhance:
            given = self.enhancement.given
            raise InvalidOptions(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} when enhance is true")
        self.output_format = normalise_format(self.output_format)
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise InvalidOptions(f"quality must be between 1 and 100, got {self.quality}")
        if self.pixel_boost is not None and (isinstance(self.pixel_boost, bool) or self.pixel_boost not in PIXEL_BOOSTS):
            raise InvalidOptions(f"pixel_boost must be one of {', '.join(map(str, PIXEL_BOOSTS))}, got {self.pixel_boost!r}")
        if isinstance(self.swapper_weight, bool) or not 0.0 <= self.swapper_weight <= 1.0:
            raise InvalidOptions(f"swapper_weight must be between 0 and 1, got {self.swapper_weight!r}")


@dataclass
class FusionReport:
    """What happened, for the caller: faces found and swapped, boxes, scores, stage timings."""

    faces_found: int
    faces_swapped: int
    faces: list[dict[str, Any]]
    source_face: dict[str, Any]
    model_version: str
    enhanced: bool
    timings_ms: dict[str, float]
    width: int
    height: int
    sources: list[dict[str, Any]] = field(default_factory=list)  # the face used from each source image
    sources_skipped: list[int] = field(default_factory=list)  # source images (0-based) without a face
    swapper: str = "swapper"  # the swapper role that ran

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FusionResult:
    image: DecodedImage
    report: FusionReport


@dataclass
class EncodedFusion:
    data: bytes
    media_type: str
    report: FusionReport
