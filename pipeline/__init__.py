"""facefusion-fn's fusion pipeline: image bytes and options in, image bytes and a face report out.

`load_fuser(settings)` builds the one public entry, `Fuser`; `prepare(settings)` builds derived
artefacts ahead of serving. The rest of this package is private to it. The pipeline never sees HTTP,
events or URIs.
"""

from .config import ConfigError, EnvReader, ImageLimits, Settings, VideoLimits
from .errors import (
    EmptyImage,
    FaceError,
    ImageError,
    ImageTooLarge,
    InvalidOptions,
    ModelSetInvalid,
    ModelSetMissing,
    NoMatchingFace,
    NoReferenceFace,
    NoSourceFace,
    NoTargetFace,
    PipelineError,
    ProviderUnavailable,
    RuntimeFailure,
    UndecodableImage,
    UnsupportedImageType,
    VideoError,
)
from .files import atomic_symlink, atomic_write
from .fuser import Fuser
from .fusion_types import EncodedFusion, FuseOptions, FusionReport, FusionResult
from .images import OUTPUT_FORMATS, DecodedImage, checked_format, decode_image, encode_image, normalise_format
from .loader import ModelBundle, load_fuser, load_models, prepare
from .manifest import (
    ModelEntry,
    ModelSet,
    manifest_document,
    parse_manifest,
    plain_name,
    read_manifest,
    write_manifest_file,
)
from .model_store import VerdictCache, open_model_set, sha256_file
from .selection import MODES as FACE_MODES
from .selection import Selection
from .timing import StageTimer

__all__ = [
    "FACE_MODES",
    "OUTPUT_FORMATS",
    "ConfigError",
    "DecodedImage",
    "EmptyImage",
    "EncodedFusion",
    "EnvReader",
    "FaceError",
    "FuseOptions",
    "Fuser",
    "FusionReport",
    "FusionResult",
    "ImageError",
    "ImageLimits",
    "ImageTooLarge",
    "InvalidOptions",
    "ModelBundle",
    "ModelEntry",
    "ModelSet",
    "ModelSetInvalid",
    "ModelSetMissing",
    "NoMatchingFace",
    "NoReferenceFace",
    "NoSourceFace",
    "NoTargetFace",
    "PipelineError",
    "ProviderUnavailable",
    "RuntimeFailure",
    "Selection",
    "Settings",
    "StageTimer",
    "UndecodableImage",
    "UnsupportedImageType",
    "VerdictCache",
    "VideoError",
    "VideoLimits",
    "atomic_symlink",
    "atomic_write",
    "checked_format",
    "decode_image",
    "encode_image",
    "load_fuser",
    "load_models",
    "manifest_document",
    "normalise_format",
    "open_model_set",
    "parse_manifest",
    "plain_name",
    "prepare",
    "read_manifest",
    "sha256_file",
    "write_manifest_file",
]
