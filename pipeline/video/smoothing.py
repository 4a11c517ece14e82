"""Landmark smoothing across frames, so a swapped face does not jitter.

A detector run on each frame alone places the five landmarks a pixel or two differently every frame
even on a still face; the swap is aligned on them, so the pasted face shakes. `FaceTracker` follows
each face from frame to frame by box overlap (IoU) and smooths its box and landmarks with a one-euro
filter (Casiez, Roussel and Vogel, CHI 2012): a low-pass filter whose cut-off rises with the face's
speed, so a still face is steadied strongly and a moving one is followed with little lag. Speed is
measured in face heights per second, so the same settings hold at any resolution and face size.

A face with no overlapping face in the frame before starts a new track, unsmoothed: a scene cut or a
face lost for a frame restarts smoothing instead of dragging the old position along. `reset()` does
the same for every face (at segment boundaries, so every segment is fused the same way whether the
clip is fused whole or in segments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..faces import Face

DEFAULT_MIN_CUTOFF_HZ = 1.0
DEFAULT_BETA = 5.0  # cut-off Hz added per face height per second of speed
DEFAULT_D_CUTOFF_HZ = 1.0
DEFAULT_IOU = 0.3


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _alpha(cutoff_hz: float, period_s: float) -> float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / period_s)


@dataclass
class _Track:
    value: np.ndarray  # (14,) float64: box (4) then landmarks (10), smoothed
    speed: np.ndarray  # (14,) float64: smoothed derivative, pixels per second
    raw: np.ndarray  # (14,) float64: the last detection, as detected


def _movement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance the five landmarks moved between two frames."""
    return float(np.linalg.norm((b - a).reshape(5, 2), axis=1).mean())


class OneEuro:
    """The one-euro filter over a vector of pixel coordinates, sampled at a fixed rate."""

    def __init__(self, fps: float, min_cutoff: float = DEFAULT_MIN_CUTOFF_HZ, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF_HZ) -> None:
        self.period = 1.0 / float(fps)
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff

    def step(self, track: _Track, raw: np.ndarray, scale: float) -> None:
        """Move `track` towards `raw`; `scale` (the face's height, px) turns speed into heights/s."""
        speed = (raw - track.value) / self.period
        track.speed += _alpha(self.d_cutoff, self.period) * (speed - track.speed)
        relative = float(np.abs(track.speed).max()) / max(scale, 1.0)
        a = _alpha(self.min_cutoff + self.beta * relative, self.period)
        track.value += a * (raw - track.value)


class FaceTracker:
    """Follows faces across frames and returns them with smoothed boxes and landmarks."""

    def __init__(self, fps: float, min_cutoff: float = DEFAULT_MIN_CUTOFF_HZ, beta: float = DEFAULT_BETA,
                 iou_threshold: float = DEFAULT_IOU) -> None:
        self.filter = OneEuro(fps, min_cutoff, beta)
        self.iou_threshold = iou_threshold
        self.tracks: list[_Track] = []
        self._moves = np.zeros(2)  # summed frame-to-frame landmark movement: detected, smoothed
        self._steps = 0

    @property
    def jitter_px(self) -> dict[str, float]:
        """Mean frame-to-frame landmark movement of tracked faces, as detected and as smoothed (px):
        on a still face the first is the detector's noise and the second what is left of it."""
        detected, smoothed = self._moves / max(self._steps, 1)
        return {"detected": round(float(detected), 3), "smoothed": round(float(smoothed), 3)}

    def reset(self) -> None:
        """Forget every face: the next frame's faces start new tracks."""
        self.tracks = []

    def update(self, faces: list[Face]) -> list[Face]:
        """The faces of this frame, in the same order, with smoothed `bbox` and `kps` (new objects)."""
        raw = [np.concatenate([f.bbox.astype(np.float64), f.kps.astype(np.float64).ravel()]) for f in faces]
        pairs = sorted(((iou(t.value[:4], r[:4]), ti, fi) for ti, t in enumerate(self.tracks) for fi, r in enumerate(raw)),
                       reverse=True)
        match: dict[int, int] = {}
        used: set[int] = set()
        for overlap, ti, fi in pairs:
            if overlap < self.iou_threshold:
                break
            if ti in used or fi in match:
                continue
            match[fi] = ti
            used.add(ti)
        tracks: list[_Track] = []
        out: list[Face] = []
        for fi, (face, values) in enumerate(zip(faces, raw, strict=True)):
            if fi in match:
                track = self.tracks[match[fi]]
                before = track.value[4:].copy()
                self.filter.step(track, values, float(values[3] - values[1]))
                self._moves += (_movement(track.raw[4:], values[4:]), _movement(before, track.value[4:]))
                self._steps += 1
                track.raw = values
            else:
                track = _Track(value=values.copy(), speed=np.zeros_like(values), raw=values)
            tracks.append(track)
            out.append(Face(bbox=track.value[:4].astype(np.float32), score=face.score,
                            kps=track.value[4:].reshape(5, 2).astype(np.float32), embedding=face.embedding))
        self.tracks = tracks
        return out
