"""Small test clips made with PyAV (devtools/clips.py): a face moving slowly over a plain background, a
few seconds at a low frame rate, keyframes every `gop` frames (so a clip of a few seconds has several
segments), with or without AAC audio; a variable-frame-rate variant and an audio-only file for bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from devtools import clips
from devtools.clips import ClipSpec

from .conftest import shared_file


def make_clip(path: Path, seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (320, 240), gop: int = 5,
              audio: bool = True, vfr: bool = False) -> Path:
    """devtools.clips' clip (the face photograph moving a few pixels a frame) of `seconds` at `fps`."""
    spec = ClipSpec(frames=int(round(seconds * fps)), width=size[0], height=size[1], fps=Fraction(fps), gop=gop,
                    audio=audio, vfr=vfr)
    return clips.make_clip(path, shared_file("images", "obama.jpg"), spec)


def audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w") as out:
        sound = out.add_stream("aac", rate=16000)
        samples = int(seconds * 16000)
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            for packet in sound.encode(frame):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def stream_info(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return {"frames": frames, "audio": bool(container.streams.audio), "fps": video.average_rate,
                "duration": float(container.duration or 0) / 1e6}
