"""Input images named by a request or an event: checked once, read only when the fusion runs.

An image arrives as a URI, a data: URL, base64, or `{"uri"|"base64": …}`. Every URI is checked against
the allow-list when the reference is made, and never again, so a request naming one forbidden URI
reads nothing at all and each URI costs one check.
"""

from __future__ import annotations

import base64
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline import EncodedFusion, FuseOptions, Fuser, PipelineError, StageTimer
from pipeline.errors import UnsupportedVideoOutput, VideoError
from pipeline.sources import MAX_SOURCES

from . import leases, observe, storage, uris
from .config import JOBS_FOLDER
from .fusion import run_fusion
from .problems import Problem
from .runtime import Runtime


@dataclass(frozen=True)
class ImageRef:
    """A checked URI to read, or bytes that came with the request."""

    uri: str | None = None
    data: bytes | None = None

    def fetch(self, rt: Runtime) -> bytes:
        if self.uri is None:
            return self.data or b""
        return storage.read_bytes(self.uri, rt.max_image_bytes(), rt.config.storage_timeout_s)


Refs = dict[str, "ImageRef | list[ImageRef]"]  # `source` may be a list (several images, averaged)


def source_refs(rt: Runtime, value: Any, parse: Callable[[Runtime, Any, str], ImageRef]) -> ImageRef | list[ImageRef]:
    """The `source` of a JSON body or event: one image, or an array of 1 to MAX_SOURCES (400 naming it)."""
    if not isinstance(value, list):
        return parse(rt, value, "source")
    if not 1 <= len(value) <= MAX_SOURCES:
        raise Problem(400, "invalid-options", f"'source' must hold 1 to {MAX_SOURCES} images, got {len(value)}",
                      image="source")
    return [parse(rt, item, "source") for item in value]


def _flat(refs: Iterable[Any]) -> list[Any]:
    return [item for ref in refs for item in (ref if isinstance(ref, list) else [ref])]


def uri_ref(rt: Runtime, uri: Any) -> ImageRef:
    """A reference to a URI, checked against the allow-list."""
    return ImageRef(uri=rt.allow.check(uri))


def image_ref(rt: Runtime, value: Any, name: str) -> ImageRef:
    """Parse a JSON image field without any I/O."""
    if isinstance(value, dict):
        if isinstance(value.get("uri"), str):
            return uri_ref(rt, value["uri"])
        value = value.get("base64")
    if not isinstance(value, str) or not value:
        raise Problem(400, "missing-field", f"'{name}' must be a URI or base64 image")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    elif "://" in value:
        return uri_ref(rt, value)
    if len(value) > rt.max_image_bytes() * 4 // 3 + 8:
        raise Problem(413, "image-too-large", f"'{name}' exceeds the byte limit")
    try:
        return ImageRef(data=base64.b64decode(value, validate=True))
    except ValueError as exc:
        raise Problem(400, "invalid-base64", f"'{name}' is neither a URI nor valid base64") from exc


MARKER_SUFFIX = ".facefusion.json"  # `<output>.facefusion.json`: the completion marker of an output
OUTPUT_EXTENSIONS = ("", ".jpg", ".jpeg", ".png", ".webp")  # what the encoder writes (none: JPEG)


def reserved_name(uri: str) -> bool:
    """Names of our own bookkeeping: markers, leases, temp folders, video jobs. Never an input, never an output."""
    path = uri.split("://", 1)[-1]
    segments = path.split("/")
    return (path.endswith((MARKER_SUFFIX, leases.LEASE_SUFFIX))
            or storage.TMP_DIR in segments or JOBS_FOLDER in segments)


def output_uri(rt: Runtime, value: Any, inputs: Iterable[ImageRef | str | None] = (), operator: bool = False,
               extensions: tuple[str, ...] = OUTPUT_EXTENSIONS) -> str:
    """Check an output URI before anything is read or fused, and return it normalised.

    It must fall under ALLOWED_URI_PREFIXES (403) and ALLOWED_OUTPUT_PREFIXES (403); it may not name a
    marker, lease or temp folder (400), one of the request's own inputs or SOURCE_FACE_URI (403), a folder
    (400 for a trailing '/', 422 for an existing local folder), a name too long for its marker (400), or an
    extension the encoder does not write (400; `operator=True`, for the OUTPUT_URI template of storage
    events, makes that a 503 misconfiguration); `extensions` are those of videos for a video's output. Direct fusions, fusion.requested and storage events all
    check their output here."""
    if not isinstance(value, str) or not value:
        raise Problem(400, "invalid-uri", "'output' must be a non-empty URI")
    norm = rt.allow.check(value)
    rt.allow_output.check(norm)
    path = norm.partition("://")[2]
    if unquote(urlsplit(value).path).endswith("/") or not posixpath.basename(path):
        raise Problem(400, "invalid-uri", "the output URI names a folder, not a file")
    if reserved_name(norm):
        raise Problem(400, "reserved-output-name", "the output URI names a completion marker, a lease, the temp "
                      f"folder or a video job ({MARKER_SUFFIX}, {leases.LEASE_SUFFIX}, {storage.TMP_DIR}/, {JOBS_FOLDER}/), "
                      "which only the function writes")
    ext = posixpath.splitext(posixpath.basename(path))[1].lower()
    if ext not in extensions:
        allowed = ", ".join(e for e in extensions if e)
        if operator:
            raise Problem(503, "misconfigured", f"OUTPUT_URI makes an output ending {ext!r}; outputs must end {allowed} "
                          "or have no extension", retry_after=30)
        raise Problem(400, "unsupported-output-type", f"the output URI ends {ext!r}; outputs must end {allowed}"
                      + (" (or have no extension, for JPEG)" if "" in extensions else ""))
    uris.check_length(norm, reserve=len(MARKER_SUFFIX))
    others = [ref.uri if isinstance(ref, ImageRef) else ref for ref in _flat(inputs)]
    if rt.source_face:
        others.append(rt.source_face)
    if norm in others:
        raise Problem(403, "output-is-input", "the output URI names one of the request's inputs or SOURCE_FACE_URI; "
                      "an output never overwrites an input")
    if uris.is_local(norm) and os.path.isdir(path):
        raise Problem(422, "not-a-file", "the output URI names an existing folder, not a file")
    return norm


@contextmanager
def about(image: str) -> Iterator[None]:
    """Failures while handling one input image name it (problem member `image`)."""
    try:
        yield
    except Problem as problem:
        problem.image = problem.image or image
        raise
    except PipelineError as exc:
        exc.about(image)
        raise


@contextmanager
def about_clip() -> Iterator[None]:
    """Failures while fusing a target clip: those about the clip itself name it ("target video: ...");
    an option's problem or the output's is left as it is, for it is not about the target."""
    try:
        yield
    except UnsupportedVideoOutput:
        raise
    except VideoError as exc:
        exc.about("target")
        raise


def fetch_all(rt: Runtime, refs: Refs) -> dict[str, Any]:
    """Read every input (a list of sources as a list of bytes); a failure names the image it happened to."""
    blobs: dict[str, Any] = {}
    for name, ref in refs.items():
        with about(name):
            blobs[name] = [one.fetch(rt) for one in ref] if isinstance(ref, list) else ref.fetch(rt)
    return blobs


def fuse_inputs(rt: Runtime, fuser: Fuser, refs: Refs, options: FuseOptions,
                before_fusion: Callable[[], None] | None = None) -> tuple[EncodedFusion, StageTimer]:
    """Read the inputs and fuse them (inside the caller's fusion slot): the direct and the event path
    alike. `before_fusion` runs between the reads and the fusion (the direct path drops a request whose
    client has gone)."""
    with observe.stage("storage_read"):
        blobs = fetch_all(rt, refs)
    if before_fusion is not None:
        before_fusion()
    options.reference = blobs.get("reference")
    return run_fusion(fuser, blobs["source"], blobs["target"], options)


def write_output(rt: Runtime, uri: str, data: bytes) -> None:
    """Publish a fused image at a checked output URI."""
    with observe.stage("storage_write"):
        storage.write_atomic(uri, data, rt.config.storage_timeout_s)
