"""Video: fuse every frame of a clip, or of one segment of it, and stitch segments back by stream copy.

One job per module: `info` probes and refuses what we do not fuse, `segments` plans the cuts,
`output` picks the container and encoder, `smoothing` steadies landmarks across frames, `stages` is the
bounded thread plumbing, `fuse` runs the frames through the Fuser, `stitch` joins parts. Decoding and
encoding are PyAV's (FFmpeg bundled in its wheels). The pipeline never sees HTTP, events or URIs.
"""

from .fuse import VideoReport, fuse_video
from .info import SUPPORTED_CODECS, VideoInfo, probe
from .output import CONTAINERS, VideoOptions, codec_for, container_of
from .segments import Segment, plan_segments
from .smoothing import FaceTracker
from .stitch import StitchReport, stitch

__all__ = [
    "CONTAINERS",
    "SUPPORTED_CODECS",
    "FaceTracker",
    "Segment",
    "StitchReport",
    "VideoInfo",
    "VideoOptions",
    "VideoReport",
    "codec_for",
    "container_of",
    "fuse_video",
    "plan_segments",
    "probe",
    "stitch",
]
