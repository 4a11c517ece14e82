"""Synthetic video clips for tests and benchmarks (a development tool), written with PyAV.

A clip is a still photograph (a real face from ../shared) on a grey background, moved a few pixels
each frame so that every frame is different, optionally with a tone as AAC audio, rotation metadata,
colour properties, frames without the face, or uneven timestamps (a variable frame rate).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


@dataclass(frozen=True)
class ClipSpec:
    """What `make_clip` writes. `gop` is the keyframe interval in frames; `blank` the frame indices
    without the face; `vfr` doubles every third frame's interval, which makes the rate variable."""

    frames: int = 24
    width: int = 320
    height: int = 240
    fps: Fraction = Fraction(12)
    gop: int = 6
    audio: bool = False
    rotation: int | None = None
    blank: Collection[int] = ()
    vfr: bool = False
    face_height: float = 0.8  # of the frame's height
    codec: str = "libx264"
    crf: int = 16
    preset: str = "veryfast"  # with B-frames, so decode order differs from display order as in real clips
    bt709: bool = False
    sample_aspect_ratio: Fraction | None = None
    sample_rate: int = 16000
    still: bool = False  # the face does not move (with `noise`: a still face whose detections jitter)
    noise: float = 0.0  # grey levels of random noise added to every frame (a camera's sensor noise)


def _face_frame(face: np.ndarray, width: int, height: int, shift: int) -> np.ndarray:
    frame = np.full((height, width, 3), 110, np.uint8)
    fh, fw = face.shape[:2]
    x = max((width - fw) // 2 + shift, 0)
    y = max((height - fh) // 2, 0)
    w, h = min(fw, width - x), min(fh, height - y)
    frame[y:y + h, x:x + w] = face[:h, :w]
    return frame


def frames_of(spec: ClipSpec, photo: Path) -> list[np.ndarray]:
    """The BGR frames `make_clip` encodes: the photo moved 0..4 px right and back, blank where asked."""
    face = cv2.imread(str(photo))
    scale = spec.height * spec.face_height / face.shape[0]
    face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    out = []
    rng = np.random.default_rng(0)
    for i in range(spec.frames):
        if i in spec.blank:
            frame = np.full((spec.height, spec.width, 3), 110, np.uint8)
        else:
            frame = _face_frame(face, spec.width, spec.height, 0 if spec.still else abs(i % 8 - 4))
        if spec.noise:
            frame = np.clip(frame + rng.normal(0, spec.noise, frame.shape), 0, 255).astype(np.uint8)
        out.append(frame)
    return out


def make_clip(path: Path, photo: Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Write the clip `spec` describes to `path` (its suffix picks the container)."""
    time_base = Fraction(1, int(spec.fps.numerator * 4))
    ticks = int(1 / (spec.fps * time_base))
    with av.open(str(path), "w") as out:
        options = {"g": str(spec.gop), "keyint_min": str(spec.gop), "sc_threshold": "0", "crf": str(spec.crf),
                   "preset": spec.preset} if spec.codec == "libx264" else {"g": str(spec.gop)}
        video = out.add_stream(spec.codec, rate=spec.fps, options=options)
        video.width, video.height = spec.width, spec.height
        video.pix_fmt = "yuv420p"
        video.time_base = time_base
        if spec.bt709:
            cc = video.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1
        if spec.sample_aspect_ratio is not None:
            video.codec_context.sample_aspect_ratio = spec.sample_aspect_ratio
        if spec.rotation is not None:
            video.set_display_rotation(spec.rotation)
        audio = out.add_stream("aac", rate=spec.sample_rate, layout="mono") if spec.audio else None
        pts = 0
        for i, image in enumerate(frames_of(spec, photo)):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = pts, time_base
            pts += ticks * (2 if spec.vfr and i % 3 == 2 else 1)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            seconds = spec.frames / spec.fps
            samples = int(seconds * spec.sample_rate)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / spec.sample_rate)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts = spec.sample_rate, start
                out.mux(audio.encode(chunk))
            out.mux(audio.encode(None))
    return path
