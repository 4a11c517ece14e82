"""The output side of a video: which container and encoder an output path and the options pick, and
an encoder stream set up to keep the input's frame rate, timestamps, rotation, pixel aspect and colour.

Codec by extension: .mp4, .mov, .mkv -> H.264; .webm -> VP9 (libvpx-vp9). H.264 is encoded by NVENC
(h264_nvenc) where this machine opens it (an NVIDIA GPU with its driver; `VIDEO_NVENC=false` turns that
off), else by libx264: the GPU encodes while the CPU fuses. `codec` picks another encoder where the
container holds it: libx264, libx265, or NVENC by name, which is then refused with a clear error when
this machine cannot open it (no NVIDIA GPU or driver): asked for by name, never a silent fall-back to the
CPU, whose speed is a different promise. Every pod of one revision runs on the same kind of node, so the
parts of one job share their encoder (the stitcher refuses parts whose encoders differ).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ..config import EnvReader
from ..errors import UnsupportedVideoOutput
from ..fusion_types import FuseOptions
from .info import VideoInfo
from .pyav import av

CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
DEFAULT_CODECS = {"mp4": "libx264", "mov": "libx264", "matroska": "libx264", "webm": "libvpx-vp9"}
CODECS_BY_CONTAINER = {
    "mp4": ("libx264", "libx265", "h264_nvenc", "hevc_nvenc"),
    "mov": ("libx264", "libx265", "h264_nvenc", "hevc_nvenc"),
    "matroska": ("libx264", "libx265", "h264_nvenc", "hevc_nvenc", "libvpx-vp9"),
    "webm": ("libvpx-vp9",),
}
# Audio codecs WebM holds; the audio is copied, never re-encoded, so another one is an error there.
WEBM_AUDIO = frozenset({"opus", "vorbis"})
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# x264 preset -> NVENC p1 (fastest) .. p7 and libvpx cpu-used (8 fastest .. 0): the same speed order
_NVENC_PRESETS = dict(zip(X264_PRESETS, ("p1", "p1", "p2", "p3", "p4", "p4", "p5", "p6", "p7"), strict=True))
_VPX_CPU_USED = dict(zip(X264_PRESETS, ("8", "7", "6", "5", "4", "3", "2", "1", "0"), strict=True))
MAX_CRF = {"libvpx-vp9": 63}


@dataclass
class VideoOptions:
    """What a caller may ask of one video fusion: the per-frame fusion, and the encoder's crf (quality:
    0 is lossless for H.264, 18 visually lossless), preset (speed against size) and codec (None: by the
    output's extension)."""

    fuse: FuseOptions = field(default_factory=FuseOptions)
    crf: int = 18
    preset: str = "veryfast"
    codec: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not 0 <= self.crf <= 63:
            raise UnsupportedVideoOutput(f"crf must be a whole number from 0 to 51 (63 for VP9), got {self.crf!r}")
        if self.preset not in X264_PRESETS:
            raise UnsupportedVideoOutput(f"preset must be one of {', '.join(X264_PRESETS)}, got {self.preset!r}")
        known = sorted({c for codecs in CODECS_BY_CONTAINER.values() for c in codecs})
        if self.codec is not None and self.codec not in known:
            raise UnsupportedVideoOutput(f"codec must be one of {', '.join(known)}, got {self.codec!r}")


def container_of(path: str | Path) -> str:
    """FFmpeg's muxer name for the output's extension; UnsupportedVideoOutput for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise UnsupportedVideoOutput(f"a video output must end in {', '.join(CONTAINERS)}, got {Path(path).name!r}")
    return CONTAINERS[suffix]


def codec_for(path: str | Path, options: VideoOptions) -> str:
    """The encoder for this output and options, checked against the container and this machine."""
    fmt = container_of(path)
    codec = options.codec or DEFAULT_CODECS[fmt]
    if options.codec is None and codec == "libx264" and nvenc_by_default():
        codec = "h264_nvenc"
    if codec not in CODECS_BY_CONTAINER[fmt]:
        raise UnsupportedVideoOutput(f"{Path(path).suffix} cannot hold {codec}; it holds {', '.join(CODECS_BY_CONTAINER[fmt])}")
    limit = MAX_CRF.get(codec, 51)
    if options.crf > limit:
        raise UnsupportedVideoOutput(f"crf for {codec} must be from 0 to {limit}, got {options.crf}")
    if codec not in av.codecs_available:
        raise UnsupportedVideoOutput(f"this FFmpeg build has no {codec} encoder")
    if options.codec is not None and "nvenc" in codec:  # asked for by name (the default one was tried already)
        _check_opens(codec)
    return codec


@functools.cache
def _nvenc_opens() -> bool:
    """Whether h264_nvenc opens here (asked once per process: a trial open costs a few hundred ms)."""
    try:
        _check_opens("h264_nvenc")
    except UnsupportedVideoOutput:
        return False
    return True


def nvenc_by_default(env: Mapping[str, str] | None = None) -> bool:
    """H.264 outputs without a `codec` go to NVENC: VIDEO_NVENC (default true) and the encoder opens."""
    read = EnvReader(env)
    wanted = read.bool("VIDEO_NVENC", True)
    read.raise_problems()
    return wanted and _nvenc_opens()


def _check_opens(codec: str) -> None:
    """NVENC is in every PyAV wheel but opens only with an NVIDIA GPU and driver: try it on a tiny frame."""
    try:
        context = av.CodecContext.create(codec, "w")
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
    except av.error.FFmpegError as exc:
        raise UnsupportedVideoOutput(f"codec {codec} cannot be opened on this machine (no NVIDIA GPU or driver "
                                     f"for NVENC?): {exc}; use codec libx264 or leave it unset") from exc


def encoder_options(codec: str, options: VideoOptions, forced_keyframes: bool) -> dict[str, str]:
    """The encoder's private options for crf and preset (their names differ per encoder)."""
    if codec in ("libx264", "libx265"):
        opts = {"crf": str(options.crf), "preset": options.preset}
        if codec == "libx265":
            opts["x265-params"] = "log-level=error"  # x265 logs every encode's summary to stderr otherwise
        if forced_keyframes:
            opts["forced-idr"] = "1"  # a frame marked I starts a closed GOP the stitcher can cut at
        return opts
    if codec == "libvpx-vp9":
        return {"crf": str(options.crf), "b": "0", "cpu-used": _VPX_CPU_USED[options.preset], "row-mt": "1",
                "deadline": "good"}
    return {"preset": _NVENC_PRESETS[options.preset], "rc": "vbr", "cq": str(options.crf), "b": "0",
            "forced-idr": "1"}


def pixel_format(codec: str, wanted: str) -> str:
    """The input's pixel format where the encoder takes it (no chroma lost), else yuv420p."""
    formats = {f.name for f in av.Codec(codec, "w").video_formats or ()}
    return wanted if wanted in formats else "yuv420p"


def add_video_stream(output: av.container.OutputContainer, codec: str, info: VideoInfo, options: VideoOptions,
                     forced_keyframes: bool = False) -> av.video.stream.VideoStream:
    """An encoder stream with the input's rate, time base, size, pixel aspect, colour and rotation."""
    stream = output.add_stream(codec, rate=info.fps, options=encoder_options(codec, options, forced_keyframes))
    stream.time_base = info.time_base
    context = stream.codec_context
    context.width, context.height = info.width, info.height
    context.pix_fmt = pixel_format(codec, info.pix_fmt)
    context.framerate = info.fps
    context.time_base = 1 / info.fps
    if info.sample_aspect_ratio:
        context.sample_aspect_ratio = info.sample_aspect_ratio
    context.color_range = info.color_range
    context.colorspace = info.colorspace
    context.color_primaries = info.color_primaries
    context.color_trc = info.color_trc
    context.thread_count = 0
    if info.display_matrix is not None:
        stream.set_display_matrix(list(info.display_matrix))
    return stream


def check_audio(fmt: str, audio_codec: str | None) -> None:
    """The copied audio must fit the output container (WebM holds Opus and Vorbis only)."""
    if fmt == "webm" and audio_codec is not None and audio_codec not in WEBM_AUDIO:
        raise UnsupportedVideoOutput(f".webm cannot hold the input's {audio_codec} audio, which is copied untouched; "
                                     "write .mkv or .mp4 instead")
