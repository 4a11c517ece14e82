"""Small test clips made with PyAV: a face moving slowly over a plain background, a few seconds at a
low frame rate, keyframes every `gop` frames (so a clip of a few seconds has several segments), with
or without an AAC audio track; a variable-frame-rate variant and an audio-only file for bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .conftest import shared_file


def face_frames(count: int, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    width, height = size
    face = cv2.imread(str(shared_file("images", "obama.jpg")))
    scale = (height * 0.8) / face.shape[0]
    face = cv2.resize(face, None, fx=scale, fy=scale)
    frames = []
    for i in range(count):
        frame = np.full((height, width, 3), 90 + (i % 7) * 3, np.uint8)
        x = (width - face.shape[1]) // 2 + int(6 * np.sin(i / 4))
        y = (height - face.shape[0]) // 2
        frame[y:y + face.shape[0], max(x, 0):max(x, 0) + face.shape[1]] = face[:, : width - max(x, 0)]
        frames.append(frame)
    return frames


def make_clip(path: Path, seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (320, 240), gop: int = 5,
              audio: bool = True, vfr: bool = False) -> Path:
    count = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        video.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "0"}
        video.codec_context.time_base = Fraction(1, fps * 100)
        sound = out.add_stream("aac", rate=16000) if audio else None
        pts = 0
        for i, bgr in enumerate(face_frames(count, size)):
            frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
            frame.pts = pts
            pts += 100 if not vfr else (40 if i % 2 else 160)  # VFR: 0.04 s and 0.16 s frames in turn
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            samples = int(seconds * 16000)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[start:start + 1024].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


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
