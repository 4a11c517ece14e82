"""Input images named by a request or an event: checked once, read only when the fusion runs.

An image arrives as a URI, a data: URL, base64, or `{"uri"|"base64": …}`. Every URI is checked against
the allow-list when the reference is made, and never again, so a request naming one forbidden URI
reads nothing at all and each URI costs one check.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from . import storage
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


def fetch_all(rt: Runtime, refs: dict[str, ImageRef]) -> dict[str, bytes]:
    return {name: ref.fetch(rt) for name, ref in refs.items()}
