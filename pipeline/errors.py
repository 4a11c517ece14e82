"""Typed failures of the pipeline.

Each failure is its own class so that callers (the HTTP function, the CLI, the warm-up) can map it to
a status code or an exit code without parsing messages. `code` is a stable slug that also names the
problem type in HTTP error responses. `image` names the input a failure is about (source, target or
reference) where there is one: face errors know it by their type; image errors are told it by the
Fuser, which knows which input it was decoding (`about`).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every failure the pipeline reports on purpose."""

    code = "pipeline-error"
    image: str | None = None  # source | target | reference, when the failure is about one input
    noun = "image"  # what the input is called in the message ("target image: ...")

    def __init__(self, message: str, image: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if image is not None:
            self.image = image

    def about(self, image: str) -> PipelineError:
        """Name the input this failure is about (once: the innermost caller knows best)."""
        if self.image is None:
            self.image = image
            self.message = f"{image} {self.noun}: {self.message}"
            self.args = (self.message,)
        return self


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
    image = "source"


class NoTargetFace(FaceError):
    code = "no-target-face"
    image = "target"


class NoReferenceFace(FaceError):
    code = "no-reference-face"
    image = "reference"


class NoMatchingFace(FaceError):
    """faces=reference: the target has faces, but none is similar enough to the reference face."""

    code = "no-matching-face"
    image = "target"


class InvalidOptions(PipelineError):
    """Fusion options that cannot be honoured (unknown selector, index out of range, ...)."""

    code = "invalid-options"


class ModelSetInvalid(PipelineError):
    """The model set on the volume is missing, incomplete or corrupt. Not the caller's fault."""

    code = "model-set-invalid"


class ModelSetMissing(ModelSetInvalid):
    """No manifest where the set should be: not prefetched yet (prefetch writes the manifest last)."""

    code = "model-set-missing"


class ProviderUnavailable(ModelSetInvalid):
    """A session runs on other execution providers than EXECUTION_PROVIDERS asked for (a CUDA library that
    failed to load leaves ONNX Runtime on the CPU without an error): refused, never served slowly."""

    code = "provider-unavailable"


class RuntimeFailure(PipelineError):
    """A transient failure of the inference runtime (for example GPU out of memory). Worth a retry."""

    code = "runtime-failure"


class VideoError(PipelineError):
    """Something is wrong with an input video or what is asked of its output.

    `status` is the HTTP status the function answers with (function/problems.py reads it), so a new
    video failure needs no change there.
    """

    code = "video-error"
    status = 422
    noun = "video"


class NotAVideo(VideoError):
    """The bytes are no container FFmpeg reads, or a still image."""

    code = "not-a-video"
    status = 415


class NoVideoStream(VideoError):
    """The container opened but holds no video stream (an audio file, say)."""

    code = "no-video-stream"
    status = 422


class UnsupportedVideoCodec(VideoError):
    """The video stream's codec is not one we decode."""

    code = "unsupported-video-codec"
    status = 415


class VideoTooLarge(VideoError):
    """More than VIDEO_MAX_PIXELS per frame; refused before a frame is decoded."""

    code = "video-too-large"
    status = 413


class VideoTooLong(VideoTooLarge):
    """Longer than VIDEO_MAX_SECONDS; refused before a frame is decoded."""

    code = "video-too-long"
    status = 413


class VariableFrameRate(VideoError):
    """The frames are not evenly spaced in time: segments and frame counts would not be exact."""

    code = "variable-frame-rate"
    status = 422


class UndecodableVideo(VideoError):
    """The container looked right but its packets could not be decoded (truncated, corrupt)."""

    code = "undecodable-video"
    status = 422


class UnsupportedVideoOutput(VideoError):
    """An output we do not write: an unknown extension, a codec the container cannot hold, an encoder
    option out of range, or an encoder (NVENC) this machine cannot open."""

    code = "unsupported-video-output"
    status = 400
