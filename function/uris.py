"""URIs a request or event names: normalised, length-checked and held to an allow-list.

Every URI is checked before anything is opened: its scheme and bucket must fall under one of the
allowed prefixes after normalisation (percent-decoding, `..` and `.` segments, symlinks for file://).
"""

from __future__ import annotations

import os
import posixpath
from urllib.parse import unquote, urlsplit

from .problems import Problem

_LOCAL = ("file", "local")


def _split(uri: str) -> tuple[str, str, str]:
    if "\x00" in uri or any(ord(c) < 0x20 for c in uri):
        raise Problem(400, "invalid-uri", "the URI contains control characters")
    parts = urlsplit(uri)
    if not parts.scheme or "://" not in uri:
        raise Problem(400, "invalid-uri", "not an absolute URI (scheme://...)")
    path = unquote(parts.path)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path + unquote(parts.netloc)):
        raise Problem(400, "invalid-uri", "the URI contains control characters (percent-encoded or not)")
    if parts.query or parts.fragment:
        raise Problem(403, "uri-not-allowed", "URIs with a query or fragment are not allowed")
    return parts.scheme.lower(), parts.netloc.lower() if parts.scheme.lower() not in _LOCAL else parts.netloc, path


def normalise(uri: str) -> str:
    """Canonical form used for allow-list checks; refuses `..` outright rather than resolving it."""
    scheme, netloc, path = _split(uri)
    if any(s.strip() == ".." for s in path.split("/")):
        raise Problem(403, "uri-not-allowed", "URIs may not contain '..' segments")
    clean = posixpath.normpath(path) if path else ""
    if path.endswith("/") and not clean.endswith("/"):
        clean += "/"
    if clean == ".":
        clean = ""
    _check_length(scheme, clean)
    if scheme in _LOCAL:
        return "file://" + os.path.realpath(clean or "/")
    return f"{scheme}://{netloc}{clean}"


MAX_KEY_BYTES = 1024  # S3, GCS and Azure blob names; also well under PATH_MAX
MAX_LOCAL_NAME_BYTES = 255  # NAME_MAX of Linux filesystems


def check_length(norm: str, reserve: int = 0) -> None:
    """`_check_length` of a normalised URI (whose path is no longer percent-encoded)."""
    scheme, _, rest = norm.partition("://")
    _check_length(scheme, rest if scheme in _LOCAL else "/" + rest.partition("/")[2], reserve)


def _check_length(scheme: str, path: str, reserve: int = 0) -> None:
    """An over-long name is the caller's mistake (400), never a store failure worth retrying.
    `reserve` keeps room for a suffix added to the name (the marker beside an output)."""
    if len(path.encode()) + reserve > MAX_KEY_BYTES:
        raise Problem(400, "name-too-long", f"the object name exceeds {MAX_KEY_BYTES - reserve} bytes")
    if scheme in _LOCAL and any(len(seg.encode()) + reserve > MAX_LOCAL_NAME_BYTES for seg in path.split("/")):
        raise Problem(400, "name-too-long", f"a file name exceeds {MAX_LOCAL_NAME_BYTES - reserve} bytes")


class AllowList:
    """ALLOWED_URI_PREFIXES (or ALLOWED_OUTPUT_PREFIXES), normalised once (resolving a file:// prefix
    touches the filesystem). Entries name folders: `s3://b/in` allows `s3://b/in/x`, not `s3://b/inx`."""

    def __init__(self, prefixes: tuple[str, ...], name: str = "ALLOWED_URI_PREFIXES", code: str = "uri-not-allowed") -> None:
        self.name, self.code = name, code
        self.prefixes: list[str] = []
        for prefix in (p.strip() for p in prefixes):
            if prefix.endswith("://"):
                self.prefixes.append(prefix.lower())
                continue
            try:
                norm = normalise(prefix)
            except Problem:
                continue  # a malformed entry allows nothing
            self.prefixes.append(norm if norm.endswith("/") else norm + "/")

    @classmethod
    def exact(cls, prefixes: tuple[str, ...], name: str, code: str) -> AllowList:
        """Already normalised string prefixes, matched as they are (the fixed part of OUTPUT_URI, which
        may end inside a name: `s3://out/fused-{stem}.jpg` allows `s3://out/fused-…` only)."""
        allow = cls((), name, code)
        allow.prefixes = list(prefixes)
        return allow

    def check(self, uri: str) -> str:
        """Return the normalised URI if it is allowed; raise a 400/403 problem otherwise. No I/O besides
        resolving symlinks of file:// paths."""
        if not isinstance(uri, str) or not uri:
            raise Problem(400, "invalid-uri", "a URI must be a non-empty string")
        norm = normalise(uri)
        if any(norm.startswith(p) or norm + "/" == p for p in self.prefixes):
            return norm
        raise Problem(403, self.code, f"{norm.split('://')[0]}:// URI outside {self.name}")


def is_local(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in _LOCAL
