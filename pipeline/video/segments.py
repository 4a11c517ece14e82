"""Where a clip is cut for the fan-out: `plan_segments` splits the frames at keyframes.

Cutting only at keyframes lets each segment be decoded on its own (seek to its keyframe, decode
forward) with no frame from the segment before. Pure and cheap: it reads the probed keyframe list.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from .info import VideoInfo


@dataclass(frozen=True)
class Segment:
    """Frames `start_frame` to `end_frame` (exclusive) of a clip; times in seconds from its first frame."""

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        return cls(**{name: data[name] for name in ("index", "start_frame", "end_frame", "start_s", "end_s")})


def plan_segments(info: VideoInfo, seconds: float) -> list[Segment]:
    """Segments of about `seconds` each, cut at keyframes, covering every frame exactly once.

    Each cut is the keyframe nearest to one segment length after the previous cut, with no segment
    shorter than half that length (so a segment is longer where keyframes are sparse). A clip whose
    only keyframe is its first frame is one segment whatever its length (re-encode it with shorter
    GOPs to fan it out).
    """
    if seconds <= 0:
        raise ValueError(f"segment seconds must be positive, got {seconds}")
    target = max(float(seconds * info.fps), 1.0)
    keys = sorted(k for k in set(info.keyframes) if 0 < k < info.frames)
    cuts = [0]
    while info.frames - cuts[-1] >= 1.5 * target:  # else the rest is one segment (at most 1.5 long)
        aim = cuts[-1] + target
        lo = bisect.bisect_left(keys, cuts[-1] + target / 2)  # no segment shorter than half the length,
        hi = bisect.bisect_right(keys, info.frames - target / 2)  # the last one neither
        if lo >= hi:
            break
        at = bisect.bisect_left(keys, aim, lo, hi)
        near = [keys[i] for i in (at - 1, at) if lo <= i < hi]
        cuts.append(min(near, key=lambda k: (abs(k - aim), k)))
    bounds = [*cuts, info.frames]
    return [
        Segment(index=i, start_frame=a, end_frame=b, start_s=float(a / info.fps), end_s=float(b / info.fps))
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]
