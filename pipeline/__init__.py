"""facefusion-fn's fusion pipeline: decoded images in, images and a face report out.

The one public entry is `Fuser`; the rest of this package is private to it. The pipeline never sees
HTTP, events or URIs.
"""

from .config import ImageLimits, Settings
from .errors import (
    EmptyImage,
    FaceError,
    ImageError,
    ImageTooLarge,
    InvalidOptions,
    ModelSetInvalid,
    NoReferenceFace,
    NoSourceFace,
    NoTargetFace,
    PipelineError,
    RuntimeFailure,
    UndecodableImage,
    UnsupportedImageType,
)
from .fuser import EncodedFusion, FuseOptions, Fuser, FusionReport, FusionResult
from .images import OUTPUT_FORMATS, DecodedImage, decode_image, encode_image, normalise_format
from .model_store import ModelSet, VerdictCache, open_model_set, read_manifest, sha256_file
from .selection import MODES as FACE_MODES
from .selection import Selection
from .timing import StageTimer

__all__ = [
    "FACE_MODES",
    "OUTPUT_FORMATS",
    "DecodedImage",
    "EmptyImage",
    "EncodedFusion",
    "FaceError",
    "FuseOptions",
    "Fuser",
    "FusionReport",
    "FusionResult",
    "ImageError",
    "ImageLimits",
    "ImageTooLarge",
    "InvalidOptions",
    "ModelSet",
    "ModelSetInvalid",
    "NoReferenceFace",
    "NoSourceFace",
    "NoTargetFace",
    "PipelineError",
    "RuntimeFailure",
    "Selection",
    "Settings",
    "StageTimer",
    "UndecodableImage",
    "UnsupportedImageType",
    "VerdictCache",
    "decode_image",
    "encode_image",
    "normalise_format",
    "open_model_set",
    "read_manifest",
    "sha256_file",
]
