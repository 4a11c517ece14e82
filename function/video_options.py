"""The options of a video fusion: the image options (function/options.py) plus the encoder's.

One small table, checked like the image options (JSON types in JSON, text in multipart); a video
request's options are split by name between the two tables, and an image request never sees these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline import FuseOptions, InvalidOptions
from pipeline.video import VideoOptions
from pipeline.video.output import CODECS_BY_CONTAINER, X264_PRESETS

from .fusion import parse_options
from .options import BY_NAME as IMAGE_OPTIONS
from .options import IMAGE_FIELDS, IMAGE_ONLY, VIDEO_ONLY, Option, validate

CODECS = tuple(sorted({codec for codecs in CODECS_BY_CONTAINER.values() for codec in codecs}))
VIDEO_OPTIONS: tuple[Option, ...] = (
    Option("crf", "integer", "video: constant rate factor of the encoder (lower is better and larger; 0 to 51, to 63 "
                             "for VP9)", default=18, minimum=0, maximum=63),
    Option("preset", "string", "video: the encoder's speed preset (x264 names; mapped for NVENC and VP9)",
           default="veryfast", enum=X264_PRESETS),
    Option("codec", "string", "video: the output encoder; default by the output's container (libx264 in mp4, mov "
                              "and mkv, libvpx-vp9 in webm)", enum=CODECS),
)
BY_NAME: dict[str, Option] = {option.name: option for option in VIDEO_OPTIONS}
assert set(BY_NAME) == VIDEO_ONLY, "function/options.py's VIDEO_ONLY names this table's options"


def properties() -> dict[str, dict[str, Any]]:
    return {option.name: option.schema() for option in VIDEO_OPTIONS}


def build(raw: Mapping[str, Any], form: bool = False, accepted: bool = False) -> VideoOptions:
    """VideoOptions from raw JSON or multipart values (a `reference` among them is an input the caller
    reads; parse_options only refuses it without faces=reference); `accepted`: a stored job's options,
    read again for each segment (function/fusion.py parse_options)."""
    video_raw = {k: v for k, v in raw.items() if k in BY_NAME}
    face_raw = {k: v for k, v in raw.items() if k not in BY_NAME}
    image_only = sorted(k for k, v in face_raw.items() if k in IMAGE_ONLY and not (form and v == ""))
    if image_only:  # a clip's output is encoded by crf, preset and codec; silently ignoring these would mislead
        raise InvalidOptions(f"{', '.join(image_only)} appl{'ies' if len(image_only) == 1 else 'y'} to image targets "
                             f"only; a video's output takes {', '.join(BY_NAME)} (its format is the output's extension)")
    errors = []
    try:
        fuse: FuseOptions = parse_options(face_raw, form=form, accepted=accepted)
    except InvalidOptions as exc:
        unknown = [k for k in face_raw if k not in IMAGE_OPTIONS and k not in IMAGE_FIELDS]
        if unknown:  # name both tables in the message
            raise InvalidOptions(f"{exc.message} or video options {', '.join(BY_NAME)}") from exc
        errors.append(exc.message)
    values: dict[str, Any] = {}
    try:
        values = _validate_video(video_raw, form)
    except InvalidOptions as exc:
        errors.append(exc.message)
    if errors:
        raise InvalidOptions("; ".join(errors))
    return VideoOptions(fuse=fuse, crf=values.get("crf", 18), preset=values.get("preset", "veryfast"),
                        codec=values.get("codec"))


def _validate_video(raw: Mapping[str, Any], form: bool) -> dict[str, Any]:
    errors, values = [], {}
    for name, value in raw.items():
        if form and value == "":
            continue
        try:
            values[name] = BY_NAME[name].check(value, form)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise InvalidOptions("; ".join(errors))
    return values


__all__ = ["BY_NAME", "VIDEO_OPTIONS", "build", "properties", "validate"]
