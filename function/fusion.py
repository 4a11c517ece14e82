"""Running fusions for the function: concurrency limit, options parsing, response headers."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from werkzeug.datastructures import MIMEAccept

from pipeline import (
    OUTPUT_FORMATS,
    EncodedFusion,
    FuseOptions,
    Fuser,
    InvalidOptions,
    Selection,
    StageTimer,
    checked_format,
)
from pipeline.masks import mask_options
from pipeline.models.enhancer import EnhancerOptions
from pipeline.selection import DEFAULT_REFERENCE_THRESHOLD, MODE_OPTIONS, misplaced

from . import observe
from .metrics import INFLIGHT, STAGE_SECONDS
from .options import validate
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
            observe.inflight_rejected()
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


LOSSY = ("jpeg", "webp")  # the formats `quality` applies to


def accept_format(accept: MIMEAccept | None, default: str, formats: tuple[str, ...] = tuple(OUTPUT_FORMATS)) -> str:
    """The output format an Accept header prefers, by werkzeug's parsing (q-values, wildcards).

    Of equally acceptable types the one the client lists first wins, then `default`; a header that
    names none of ours (or only wildcards) leaves `default`. A type refused with q=0 is never written:
    `image/jpeg;q=0` alone gets PNG, and a header that refuses all of ours is a 406. `formats`: the
    formats to choose among (`default` one of them).
    """
    if accept is None:
        return default
    media = {OUTPUT_FORMATS[name]: name for name in formats}
    listed = [value.lower() for value, _ in accept]
    order = sorted(media, key=lambda m: (listed.index(m) if m in listed else len(listed), media[m] != default))
    best = accept.best_match(order)
    if best:
        return media[best]
    left = [m for m in order if not _refused(accept, m)]
    if not left:
        raise Problem(406, "not-acceptable", f"the Accept header refuses every image type this function writes "
                                             f"({', '.join(media)}); the format option picks one too")
    return default if OUTPUT_FORMATS[default] in left else media[left[0]]


def _refused(accept: MIMEAccept, media_type: str) -> bool:
    """Whether the header refuses `media_type` outright (q=0 on its most specific match), rather than
    merely not naming it."""
    matches = (media_type, media_type.split("/")[0] + "/*", "*/*")
    return accept.quality(media_type) == 0 and any(q == 0 and value.lower() in matches for value, q in accept)


def parse_options(raw: Mapping[str, Any], accept: MIMEAccept | None = None, output_uri: str | None = None,
                  form: bool = False, accepted: bool = False) -> FuseOptions:
    """Options from multipart fields (`form`) or JSON, checked against the one option table
    (function/options.py); a `reference` image among them is an input, set once it is read (given without
    faces=reference it is refused, as index is without faces=index). The format: see `output_format`.
    Invalid values raise the pipeline's InvalidOptions, which the boundary maps to 400. `accepted`: the
    options of a job an earlier revision accepted (a video's segments read them again), which rules
    added since must not fail halfway; an option of another face selection is ignored there, as it was."""
    values = validate({k: v for k, v in raw.items() if k != "reference"}, form=form)
    mode = values.get("faces", "largest")
    given = [*values, *(["reference"] if raw.get("reference") is not None else [])]  # the image, not an option
    wrong = None if accepted else misplaced(mode, given)
    if wrong is not None:
        raise InvalidOptions(f"{wrong} applies when faces is {MODE_OPTIONS[wrong]}, not {mode}")
    selection = Selection(
        mode=mode,
        index=values.get("index"),
        min_face_size=values.get("min_face_size", 0),
        reference_threshold=values.get("reference_threshold", DEFAULT_REFERENCE_THRESHOLD),
    )
    masks = mask_options(values.get("mask"), values.get("mask_blur"), values.get("mask_padding"),
                         values.get("mask_regions"), accepted=accepted)
    return FuseOptions(selection=selection, enhance=values.get("enhance", False),
                       output_format=output_format(values, accept, output_uri),
                       quality=values.get("quality", 92), pixel_boost=values.get("pixel_boost"), masks=masks,
                       swapper=values.get("swapper", "swapper"), swapper_weight=values.get("swapper_weight", 0.5),
                       enhancement=EnhancerOptions(values.get("enhancer"), values.get("enhancer_blend"),
                                                   values.get("enhancer_weight")),
                       detector_angles=values.get("detector_angles", (0,)))


def run_fusion(fuser: Fuser, source: bytes | list[bytes], target: bytes,
               options: FuseOptions) -> tuple[EncodedFusion, StageTimer]:
    """Fuse (one source image or a list) and record the stage timings in the metrics."""
    timer = StageTimer(observe.stage_hook())  # stage spans when tracing is on
    result = fuser.fuse_bytes(source, target, options, timer)
    for stage, ms in timer.ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    observe.fused(result.report)
    return result, timer


def server_timing(timer: StageTimer) -> str:
    return ", ".join(f"{name};dur={ms:.1f}" for name, ms in timer.ms.items())


def fusion_headers(result: EncodedFusion, timer: StageTimer) -> dict[str, str]:
    """A fusion's own headers (X-Revision is put on every answer by main.fuse)."""
    return {
        "Server-Timing": server_timing(timer),
        "X-Faces-Swapped": str(result.report.faces_swapped),
        "X-Faces-Found": str(result.report.faces_found),
        "X-Model-Version": result.report.model_version,
    }


def output_format(values: Mapping[str, Any], accept: MIMEAccept | None, output_uri: str | None) -> str:
    """The `format` option, else the output URI's extension (with `output_uri`), else what `accept`
    prefers (pass it only when the image is the answer; with a `quality`, among JPEG and WebP), else
    JPEG. Refused (400) rather than silently done: a `format` that an output's extension contradicts
    (`a.png` written with JPEG bytes), and a `quality` for a PNG, which is lossless and has none."""
    chosen = checked_format(values.get("format"), output_uri) or ("jpeg" if output_uri else None)
    if chosen is None and values.get("quality") is not None:  # a quality asks for a lossy answer: the best one
        with suppress(Problem):  # Accept refuses both: PNG it is, and the quality is refused below
            chosen = accept_format(accept, "jpeg", LOSSY)
    chosen = chosen or accept_format(accept, "jpeg")
    if chosen == "png" and values.get("quality") is not None:
        raise InvalidOptions("quality applies to JPEG and WebP; a PNG is lossless and has none")
    return chosen
