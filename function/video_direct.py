"""Direct fusion of a short clip over HTTP: multipart with a video `target`, or JSON naming one.

A target is a video by its declared content type (`video/*`), its bytes (an MP4/MOV box or the
Matroska magic) or, for a URI, its extension. The clip is copied into this process's work folder
(at most MAX_VIDEO_BYTES), probed, and refused with 413 when it is longer than VIDEO_MAX_SYNC_SECONDS:
longer clips go through the fan-out (a `fusion.requested` event or an upload to the bucket), which
answers at once and reports progress at GET /jobs/<id>. The answer is the fused clip (audio copied),
or with `output` a JSON report once it is written there.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import flask
from werkzeug.datastructures import FileStorage

from pipeline.video import VideoOptions, fuse_video, probe

from . import events, storage, video_files, video_media, video_options
from .inputs import Refs, about, about_clip, output_uri, uri_ref
from .problems import Problem
from .reply import Reply, json_response
from .runtime import Runtime


def is_video_upload(part: FileStorage) -> bool:
    """A multipart file that is a video by its declared type or its first bytes (the stream is rewound)."""
    if video_media.is_video_type(part.mimetype):
        return True
    head = part.stream.read(video_media.SNIFF_BYTES)
    part.stream.seek(0)
    return video_media.looks_like_video(head)


def is_video_value(value: Any) -> bool:
    """A JSON target that names a video: a URI with a video extension, or base64 of a video."""
    if isinstance(value, dict):
        value = value.get("uri") or value.get("base64")
    if not isinstance(value, str):
        return False
    if "://" in value and not value.startswith("data:"):
        return video_media.is_video_name(value)
    if value.startswith("data:"):
        return video_media.is_video_type(value[5:].split(";", 1)[0].split(",", 1)[0]) or _b64_is_video(value.partition(",")[2])
    return _b64_is_video(value)


def _b64_is_video(text: str) -> bool:
    try:
        return video_media.looks_like_video(base64.b64decode(text[:88] + "=" * (-len(text[:88]) % 4)))
    except (binascii.Error, ValueError):
        return False


def _save_upload(part: FileStorage, dest: Path, limit: int) -> Path:
    size = 0
    with open(dest, "wb") as out:
        while chunk := part.stream.read(video_files.CHUNK):
            size += len(chunk)
            if size > limit:
                raise Problem(413, "video-too-large", f"'target' exceeds MAX_VIDEO_BYTES ({limit} bytes)", image="target")
            out.write(chunk)
    return dest


def multipart(rt: Runtime, request: flask.Request, refs: Refs, target: FileStorage,
              options: dict[str, Any], output: str | None) -> Reply:
    """multipart: `source` (and `reference`) images already read into `refs`; `target` a video upload."""
    built = video_options.build(options, form=True)  # bad options: a 400 before the upload is read
    out_uri = _output(rt, output, list(refs.values()))
    dest = video_files.temp_path(".video")
    try:
        _save_upload(target, dest, rt.config.max_video_bytes)
        return Reply(_fuse(rt, refs, dest, built, out_uri), "multipart-video")
    finally:
        video_files.remove(dest)


def json_body(rt: Runtime, refs: Refs, target: Any, options: dict[str, Any], output: Any) -> Reply:
    """JSON: `target` a video URI (fetched, bounded) or base64; images in `refs` as for image fusions."""
    built = video_options.build(options)  # bad options: a 400 before the clip is fetched
    if isinstance(target, dict):
        target = target.get("uri") or target.get("base64")
    uri = None
    if isinstance(target, str) and "://" in target and not target.startswith("data:"):
        uri = uri_ref(rt, target).uri or ""
    out_uri = _output(rt, output, [*refs.values(), uri])  # never the clip itself: the output may not overwrite it
    dest = video_files.temp_path(".video")
    try:
        if uri is not None:
            video_files.fetch(uri, dest, rt.config.max_video_bytes, rt.config.storage_timeout_s)
        else:
            text = str(target).partition(",")[2] if str(target).startswith("data:") else str(target)
            if len(text) > rt.config.max_video_bytes * 4 // 3 + 8:
                raise Problem(413, "video-too-large", "'target' exceeds MAX_VIDEO_BYTES", image="target")
            try:
                dest.write_bytes(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise Problem(400, "invalid-base64", "'target' is neither a URI nor valid base64", image="target") from exc
        return Reply(_fuse(rt, refs, dest, built, out_uri), "json-video")
    finally:
        video_files.remove(dest)


def _output(rt: Runtime, output: Any, inputs: list[Any]) -> str | None:
    """The checked output URI (None: answer with the clip); it may overwrite none of `inputs`."""
    if output is None or output == "":
        return None
    if not isinstance(output, str):
        raise Problem(400, "invalid-uri", "'output' must be a URI")
    return output_uri(rt, output, inputs, extensions=video_media.OUTPUT_EXTENSIONS)


def _fuse(rt: Runtime, refs: Refs, clip: Path, options: VideoOptions, out_uri: str | None) -> flask.Response:
    fuser = rt.fuser()
    with about("target"):
        info = probe(clip, rt.config.video_limits)
    limit = rt.config.video_max_sync_seconds
    if info.duration_s > limit:
        raise Problem(413, "video-too-long-for-direct", f"the clip is {info.duration_s:.1f} s; a direct request takes "
                      f"at most VIDEO_MAX_SYNC_SECONDS ({limit:g} s). Send a {events.FUSION_REQUESTED} event with the "
                      "clip's URI, or upload it to the bucket, for the fan-out (GET /jobs/<id> reports progress)",
                      image="target")
    ext = video_media.extension(out_uri) if out_uri else ".mp4"
    out = video_files.temp_path(ext)
    try:
        with rt.limiter.slot():
            with about("source"):
                sources = refs["source"]  # several images: averaged, as for a still
                source = [one.fetch(rt) for one in sources] if isinstance(sources, list) else sources.fetch(rt)
            if "reference" in refs:
                with about("reference"):
                    options.fuse.reference = refs["reference"].fetch(rt)
            with about_clip():
                report = fuse_video(fuser, source, clip, out, options, info=info)
            data = out.read_bytes()
        headers = {"X-Frames": str(report.frames), "X-Frames-Swapped": str(report.frames_swapped),
                   "X-Frames-Without-Face": str(report.frames_without_face), "X-Model-Version": fuser.model_version,
                   "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in report.stages_ms.items())}
        if out_uri is None:
            return flask.Response(data, status=200, mimetype=video_media.media_type(ext), headers=headers)
        storage.write_atomic(out_uri, data, video_files.deadline(rt.config.storage_timeout_s, len(data)))
        return json_response({"output": out_uri, "media_type": video_media.media_type(ext),
                              "revision": rt.config.revision, "frames": info.frames, "duration_s": info.duration_s,
                              "report": report.as_dict()}, headers=headers)
    finally:
        video_files.remove(out)
