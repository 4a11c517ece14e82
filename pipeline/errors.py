"""Typed failures of the pipeline.

Each failure is its own class so that callers (the HTTP function, the CLI, the warm-up) can map it to
a status code or an exit code without parsing messages. `code` is a stable slug that also names the
problem type in HTTP error responses.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every failure the pipeline reports on purpose."""

    code = "pipeline-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImageError(PipelineError):
    """Something is wrong with an input image."""

    code = "image-error"


class EmptyImage(ImageError):
    """The input has zero bytes: usually a failed or truncated upload."""

    code = "empty-image"


class UnsupportedImageType(ImageError):
    """The bytes are not an image format we decode (JPEG, PNG, WebP, BMP, TIFF)."""

    code = "unsupported-image-type"


class UndecodableImage(ImageError):
    """The header looked like an image but the pixels could not be decoded (truncated, corrupt)."""

    code = "undecodable-image"


class ImageTooLarge(ImageError):
    """The input exceeds MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS; refused before pixels are allocated."""

    code = "image-too-large"


class FaceError(PipelineError):
    """The image decoded but holds no usable face."""

    code = "face-error"


class NoSourceFace(FaceError):
    code = "no-source-face"


class NoTargetFace(FaceError):
    code = "no-target-face"


class NoReferenceFace(FaceError):
    code = "no-reference-face"


class InvalidOptions(PipelineError):
    """Fusion options that cannot be honoured (unknown selector, index out of range, ...)."""

    code = "invalid-options"


class ModelSetInvalid(PipelineError):
    """The model set on the volume is missing, incomplete or corrupt. Not the caller's fault."""

    code = "model-set-invalid"


class ModelSetMissing(ModelSetInvalid):
    """No manifest where the set should be: not prefetched yet (prefetch writes the manifest last)."""

    code = "model-set-missing"


class RuntimeFailure(PipelineError):
    """A transient failure of the inference runtime (for example GPU out of memory). Worth a retry."""

    code = "runtime-failure"
