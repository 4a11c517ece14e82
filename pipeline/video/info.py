"""What a video is: `probe` reads a clip's stream properties and refuses what we do not fuse.

Probing demuxes every video packet (no decoding but the first frame), which is cheap next to fusion
and gives what the rest needs exactly: the frame count, the keyframes segments are cut at, and a proof
that the frame rate is constant. A constant frame rate is required because segments, frame indices
and the stitched output's duration are all computed from it; a variable rate is refused (422) rather
than fused with drifting timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..config import VideoLimits
from ..errors import (
    NotAVideo,
    NoVideoStream,
    UndecodableVideo,
    UnsupportedVideoCodec,
    VariableFrameRate,
    VideoTooLarge,
    VideoTooLong,
)
from .pyav import av

# Decoders whose frames the pipeline has been run on; FFmpeg decodes many more (gif, screen codecs),
# which we refuse (415) rather than promise.
SUPPORTED_CODECS = frozenset({
    "h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "prores", "dnxhd", "ffv1",
    "mjpeg", "theora",
})
# FFmpeg's demuxers for still images: a JPEG opens as a one-frame "video", which it is not.
IMAGE_FORMATS = frozenset({"image2", "image2pipe", "apng", "gif", "webp_pipe"})
# A timestamp may be this many frames off its ideal place (container rounding, e.g. Matroska's
# milliseconds at 29.97 fps) and the clip still counts as constant frame rate.
_CFR_TOLERANCE = 0.25


@dataclass(frozen=True)
class VideoInfo:
    """A clip's video stream, as probed. Frame indices count display order from 0.

    `start_pts` (the first frame's pts, in `time_base`) and `frame_ticks` (one frame's length in
    `time_base`) place frame i at `start_pts + i * frame_ticks`; decoding maps a frame's pts back to
    its index with `index_of`. `display_matrix` is the stream's rotation as FFmpeg stores it (9 ints),
    copied to the output so players turn it the same way; `rotation` is its angle in degrees
    (counter-clockwise, as PyAV reads it).
    """

    width: int
    height: int
    fps: Fraction
    time_base: Fraction
    frames: int
    duration_s: float
    codec: str
    pix_fmt: str
    rotation: int = 0
    sample_aspect_ratio: Fraction | None = None
    color_range: int = 0
    colorspace: int = 2
    color_primaries: int = 2
    color_trc: int = 2
    has_audio: bool = False
    audio_codec: str | None = None
    keyframes: list[int] = field(default_factory=list)
    start_pts: int = 0
    frame_ticks: Fraction = Fraction(1)
    display_matrix: tuple[int, ...] | None = None
    container: str = ""

    def pts_of(self, index: int) -> int:
        """The ideal pts of frame `index` (in `time_base`); real ones are within a quarter frame of it."""
        return self.start_pts + round(index * self.frame_ticks)

    def index_of(self, pts: int) -> int:
        """The frame index of a decoded frame's pts."""
        return round((pts - self.start_pts) / self.frame_ticks)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (fractions as "num/den" strings): for job documents and reports."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if isinstance(value, Fraction):
                value = f"{value.numerator}/{value.denominator}"
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoInfo:
        """The inverse of `as_dict`, so a segment worker need not probe again."""
        values = dict(data)
        for name in ("fps", "time_base", "frame_ticks", "sample_aspect_ratio"):
            if values.get(name) is not None:
                values[name] = Fraction(values[name])
        if values.get("display_matrix") is not None:
            values["display_matrix"] = tuple(values["display_matrix"])
        return cls(**values)


def probe(path: str | Path, limits: VideoLimits | None = None) -> VideoInfo:
    """Read and check the clip at `path`; raises a VideoError subclass for what we do not fuse.

    A missing or unreadable file raises OSError (the caller's I/O problem, not the video's).
    """
    limits = limits or VideoLimits()
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        if isinstance(exc, OSError):  # missing, a folder, no permission
            raise
        raise NotAVideo(f"the file is not a video container FFmpeg can read ({exc.strerror or exc})") from exc
    with container:
        if container.format.name in IMAGE_FORMATS or container.format.name.endswith("_pipe"):
            raise NotAVideo(f"the file is a still image ({container.format.name}), not a video")
        if not container.streams.video:
            raise NoVideoStream("the file holds no video stream")
        video = container.streams.video[0]
        codec = video.codec_context.name
        if codec not in SUPPORTED_CODECS:
            raise UnsupportedVideoCodec(f"video codec {codec} is not supported; supported: {', '.join(sorted(SUPPORTED_CODECS))}")
        width, height = video.codec_context.width, video.codec_context.height
        if width * height > limits.max_pixels:
            raise VideoTooLarge(f"frames of {width}x{height} exceed VIDEO_MAX_PIXELS ({limits.max_pixels} pixels)")
        declared = _declared_seconds(container, video)
        if declared is not None and declared > limits.max_seconds:
            raise VideoTooLong(f"the clip lasts {declared:.1f} s, more than VIDEO_MAX_SECONDS ({limits.max_seconds:g} s)")
        audio = container.streams.audio[0] if container.streams.audio else None
        pts, keys = _video_packets(container, video)
        if not pts:
            raise UndecodableVideo("the video stream holds no frames")
        time_base = Fraction(video.time_base)
        fps, ticks, order = _constant_rate(video, np.asarray(pts, np.int64), time_base)
        frames = len(pts)
        duration = float(frames / fps)
        if duration > limits.max_seconds:
            raise VideoTooLong(f"the clip lasts {duration:.1f} s, more than VIDEO_MAX_SECONDS ({limits.max_seconds:g} s)")
        rank = np.empty(frames, np.int64)
        rank[order] = np.arange(frames)
        keyframes = sorted(int(rank[i]) for i in keys)
        first = _first_frame(container, video)
        matrix = None
        for side in first.side_data:
            if str(side.type).endswith("DISPLAYMATRIX"):
                matrix = tuple(int(v) for v in np.frombuffer(bytes(side), np.int32))
        sar = video.codec_context.sample_aspect_ratio
        cc = video.codec_context
        return VideoInfo(
            width=width, height=height, fps=fps, time_base=time_base, frames=frames, duration_s=duration,
            codec=codec, pix_fmt=cc.pix_fmt or "yuv420p", rotation=int(round(first.rotation or 0)),
            sample_aspect_ratio=Fraction(sar) if sar else None,
            color_range=int(cc.color_range), colorspace=int(cc.colorspace),
            color_primaries=int(cc.color_primaries), color_trc=int(cc.color_trc),
            has_audio=audio is not None, audio_codec=audio.codec_context.name if audio is not None else None,
            keyframes=keyframes, start_pts=int(min(pts)), frame_ticks=ticks, display_matrix=matrix,
            container=container.format.name,
        )


def _declared_seconds(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> float | None:
    """The duration the header claims, to refuse an over-long clip before reading its packets."""
    if video.duration is not None and video.time_base:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _video_packets(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> tuple[list[int], list[int]]:
    """Each frame packet's pts (decode order) and the positions of the keyframe packets among them."""
    pts: list[int] = []
    keys: list[int] = []
    try:
        for packet in container.demux(video):
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None:
                raise VariableFrameRate("the video stream has frames without timestamps; remux it into MP4 or MKV")
            if packet.is_keyframe:
                keys.append(len(pts))
            pts.append(int(packet.pts))
    except av.error.FFmpegError as exc:
        raise UndecodableVideo(f"the video stream could not be read: {exc}") from exc
    return pts, keys


def _constant_rate(video: av.video.stream.VideoStream, pts: np.ndarray, time_base: Fraction) -> tuple[Fraction, Fraction, np.ndarray]:
    """The frame rate every timestamp sits on (within a quarter frame), its tick length, and the display
    order of the packets; VariableFrameRate when no declared rate fits."""
    order = np.argsort(pts, kind="stable")
    ordered = pts[order] - pts[order[0]]
    if len(ordered) > 1 and np.any(np.diff(ordered) <= 0):
        raise VariableFrameRate("two frames share a timestamp")
    for rate in (video.base_rate, video.average_rate, video.guessed_rate):
        if not rate or rate <= 0:
            continue
        ticks = 1 / (Fraction(rate) * time_base)
        ideal = np.arange(len(ordered), dtype=np.float64) * float(ticks)
        if np.all(np.abs(ordered - ideal) <= _CFR_TOLERANCE * float(ticks)):
            return Fraction(rate), ticks, order
    gaps = np.diff(ordered) * float(time_base) * 1000
    spread = f"frame intervals range from {gaps.min():.1f} to {gaps.max():.1f} ms" if len(gaps) else "one frame"
    raise VariableFrameRate(f"the clip has a variable frame rate ({spread}); re-encode it at a constant rate")


def _first_frame(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> av.VideoFrame:
    """The first decodable frame (its side data carries the rotation)."""
    try:
        container.seek(0, stream=video)
        for frame in container.decode(video):
            return frame
    except av.error.FFmpegError as exc:
        raise UndecodableVideo(f"the video stream could not be decoded: {exc}") from exc
    raise UndecodableVideo("the video stream holds no decodable frame")
