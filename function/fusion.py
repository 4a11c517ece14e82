"""Running fusions for the function: concurrency limit, options parsing, response headers."""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline import (
    EncodedFusion,
    FuseOptions,
    Fuser,
    InvalidOptions,
    Selection,
    StageTimer,
    normalise_format,
)
from pipeline.config import TRUE_WORDS

from .metrics import INFLIGHT, STAGE_SECONDS
from .problems import Problem


class InflightLimiter:
    """At most `limit` fusions at once; the next caller gets 429 at once instead of a queue."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)
        self._active = 0
        self._count_lock = threading.Lock()

    @property
    def active(self) -> int:
        """Fusions running now (the shutdown drain waits for zero)."""
        return self._active

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._sem.acquire(blocking=False):
            raise Problem(429, "too-many-inflight", f"{self.limit} fusions are already running; retry shortly", retry_after=1)
        INFLIGHT.inc()
        with self._count_lock:
            self._active += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._active -= 1
            INFLIGHT.dec()
            self._sem.release()


def _number(value: Any, name: str, kind: type, default: Any = None) -> Any:
    """An int or float option from a form field or JSON; absent or empty means `default`."""
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidOptions(f"{name} must be {'an integer' if kind is int else 'a number'}") from exc


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in TRUE_WORDS


def _format(raw: dict[str, Any], accept: str, default: str) -> str:
    """`format` if given, else the first image type the Accept header names, else `default`."""
    if raw.get("format"):
        return str(raw["format"])
    for media in ("image/webp", "image/png", "image/jpeg"):
        if media in (accept or ""):
            return media
    return default


def parse_options(raw: dict[str, Any], reference: bytes | None = None, accept: str = "",
                  default_format: str = "jpeg") -> FuseOptions:
    """Options from form fields or JSON: faces, index, reference_threshold, min_face_size, enhance, format,
    quality. Invalid values raise the pipeline's InvalidOptions, which the boundary maps to 400."""
    threshold = _number(raw.get("reference_threshold"), "reference_threshold", float)
    selection = Selection(
        mode=str(raw.get("faces") or "largest"),
        index=_number(raw.get("index"), "index", int),
        min_face_size=_number(raw.get("min_face_size"), "min_face_size", int, 0) or 0,
        **({"reference_threshold": threshold} if threshold is not None else {}),
    )
    return FuseOptions(selection=selection, enhance=_bool(raw.get("enhance", False)), reference=reference,
                       output_format=_format(raw, accept, default_format),
                       quality=_number(raw.get("quality"), "quality", int, 92))


def run_fusion(fuser: Fuser, source: bytes, target: bytes, options: FuseOptions) -> tuple[EncodedFusion, StageTimer]:
    """Fuse and record the stage timings in the metrics."""
    timer = StageTimer()
    result = fuser.fuse_bytes(source, target, options, timer)
    for stage, ms in timer.ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    return result, timer


def server_timing(timer: StageTimer) -> str:
    return ", ".join(f"{name};dur={ms:.1f}" for name, ms in timer.ms.items())


def fusion_headers(result: EncodedFusion, timer: StageTimer, revision: str) -> dict[str, str]:
    return {
        "Server-Timing": server_timing(timer),
        "X-Faces-Swapped": str(result.report.faces_swapped),
        "X-Faces-Found": str(result.report.faces_found),
        "X-Model-Version": result.report.model_version,
        "X-Revision": revision,
    }


def format_for_uri(uri: str) -> str:
    """The output format an output URI's extension names; JPEG when it names none we write."""
    try:
        return normalise_format(posixpath.splitext(uri)[1].lstrip("."))
    except InvalidOptions:
        return "jpeg"
