"""Telling a video from an image: by extension, declared content type or the container's magic bytes.

The ways in (direct HTTP, storage events, `fusion.requested`) route a video target to the video path
and everything else to the image path, so this is the one place that decides what counts as a video.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
OUTPUT_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm")  # the containers an output may name
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
               ".webm": "video/webm"}
VIDEO_CONTENT_TYPES = frozenset({*MEDIA_TYPES.values(), "video/x-m4v", "application/mp4"})
SNIFF_BYTES = 64


def extension(uri_or_name: str) -> str:
    """The lower-case extension of a URI's path or a file name ('' when none)."""
    path = urlsplit(uri_or_name).path if "://" in uri_or_name else uri_or_name
    return posixpath.splitext(posixpath.basename(path))[1].lower()


def is_video_name(uri_or_name: str | None) -> bool:
    return bool(uri_or_name) and extension(uri_or_name) in VIDEO_EXTENSIONS


def is_video_type(content_type: str | None) -> bool:
    """`video/*` (any subtype: the probe decides whether we can read it) or MP4's application type."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media.startswith("video/") or media in VIDEO_CONTENT_TYPES


def looks_like_video(head: bytes) -> bool:
    """ISO base media (MP4, MOV: a `ftyp`, `moov`, `mdat`, `free` or `wide` box first) or Matroska/WebM
    (the EBML magic 1A 45 DF A3). Images never start this way."""
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return True
    return head[:4] == b"\x1a\x45\xdf\xa3"


def media_type(uri_or_extension: str) -> str:
    ext = uri_or_extension if uri_or_extension.startswith(".") else extension(uri_or_extension)
    return MEDIA_TYPES.get(ext.lower(), "video/mp4")
