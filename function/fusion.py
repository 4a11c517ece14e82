"""Running fusions for the function: concurrency limit, options parsing, response headers."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline import (
    DecodedImage,
    EncodedFusion,
    FuseOptions,
    Fuser,
    PipelineError,
    Selection,
    StageTimer,
    normalise_format,
)

from .metrics import INFLIGHT, STAGE_SECONDS
from .problems import Problem, from_pipeline


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
        raise Problem(400, "invalid-options", f"{name} must be {'an integer' if kind is int else 'a number'}") from exc


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def parse_options(raw: dict[str, Any], reference: DecodedImage | None = None) -> FuseOptions:
    """Options from form fields or JSON: faces, index, reference_threshold, min_face_size, enhance."""
    try:
        threshold = _number(raw.get("reference_threshold"), "reference_threshold", float)
        selection = Selection(
            mode=str(raw.get("faces") or "largest"),
            index=_number(raw.get("index"), "index", int),
            min_face_size=_number(raw.get("min_face_size"), "min_face_size", int, 0) or 0,
            **({"reference_threshold": threshold} if threshold is not None else {}),
        )
    except PipelineError as exc:
        raise from_pipeline(exc) from exc
    return FuseOptions(selection=selection, enhance=_bool(raw.get("enhance", False)), reference=reference)


def output_format(raw: dict[str, Any], accept: str, default: str = "jpeg") -> tuple[str, int]:
    fmt = raw.get("format")
    if not fmt:
        for media in ("image/webp", "image/png", "image/jpeg"):
            if media in (accept or ""):
                fmt = media
                break
    try:
        fmt = normalise_format(str(fmt or default))
    except PipelineError as exc:
        raise from_pipeline(exc) from exc
    quality = _number(raw.get("quality"), "quality", int, 92)
    if not 1 <= quality <= 100:
        raise Problem(400, "invalid-options", "quality must be between 1 and 100")
    return fmt, quality


def run_fusion(fuser: Fuser, source: bytes, target: bytes, options: FuseOptions, fmt: str, quality: int,
               timer: StageTimer) -> EncodedFusion:
    try:
        result = fuser.fuse_bytes(source, target, dataclasses.replace(options, output_format=fmt, quality=quality), timer=timer)
    except PipelineError as exc:
        raise from_pipeline(exc) from exc
    for stage, ms in timer.ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    return result


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
