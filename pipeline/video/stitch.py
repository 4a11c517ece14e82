"""`stitch`: join segment parts into one clip by stream copy, with the original audio.

No frame is decoded or re-encoded: each part's packets are copied in order with their timestamps,
which are already the input's (a part is encoded on the input's timeline), and the audio packets of
the original file are copied beside them, interleaved by time. So stitching costs about what copying
the file costs, and the output has exactly the input's frames, duration and audio.

Parts must come from the same encoder settings (same codec, size and codec headers), as
`fuse_video` writes them with the same options; a part that differs, or whose timestamps do not
follow the part before, is refused rather than joined into a clip that plays wrong.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import UndecodableVideo, UnsupportedVideoOutput
from .output import check_audio, container_of
from .pyav import av


@dataclass
class StitchReport:
    """What was joined: frames and audio packets copied, the video's duration (first frame shown to
    last frame's end), the time it took."""

    parts: int
    frames: int
    audio_packets: int
    duration_s: float
    seconds: float
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _seconds(packet: av.Packet) -> float:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return float(stamp * packet.time_base) if stamp is not None else 0.0


def _audio_packets(path: Path | None) -> tuple[av.container.InputContainer | None, av.audio.stream.AudioStream | None,
                                                Iterator[av.Packet]]:
    if path is None:
        return None, None, iter(())
    container = av.open(str(path), metadata_errors="ignore")
    if not container.streams.audio:
        container.close()
        return None, None, iter(())
    stream = container.streams.audio[0]
    return container, stream, (p for p in container.demux(stream) if p.size)


def stitch(parts: list[Path], output_path: Path, audio_from: Path | None, *, suffix: str | None = None) -> StitchReport:
    """Copy the video packets of `parts` (in order) and the audio of `audio_from` into `output_path`
    (its container by its extension, or `suffix` where it is a temporary name)."""
    if not parts:
        raise ValueError("stitch needs at least one part")
    started = time.perf_counter()
    fmt = container_of(f"output{suffix}" if suffix else output_path)
    audio_file, audio_in, audio_iter = _audio_packets(audio_from)
    frames = audio_count = 0
    last_dts: Fraction | None = None
    end_time = Fraction(0)
    start_time: Fraction | None = None
    try:
        if audio_in is not None:
            check_audio(fmt, audio_in.codec_context.name)
        with av.open(str(output_path), "w", format=fmt) as out:
            template = None
            video_out = audio_out = None
            pending = next(audio_iter, None)
            for number, part in enumerate(parts):
                with av.open(str(part), metadata_errors="ignore") as source:
                    if not source.streams.video:
                        raise UndecodableVideo(f"part {number} ({Path(part).name}) holds no video stream")
                    video = source.streams.video[0]
                    if template is None:
                        template = video
                        video_out = out.add_stream_from_template(video)
                        if audio_in is not None:
                            audio_out = out.add_stream_from_template(audio_in)
                        headers = bytes(video.codec_context.extradata or b"")
                        shape = (video.codec_context.name, video.codec_context.width, video.codec_context.height)
                    elif (bytes(video.codec_context.extradata or b""), (video.codec_context.name, video.codec_context.width,
                                                                        video.codec_context.height)) != (headers, shape):
                        raise UndecodableVideo(f"part {number} ({Path(part).name}) was encoded differently from part 0 "
                                               "(codec, size or codec headers); parts must share their encoder settings")
                    for packet in source.demux(video):
                        if not packet.size:
                            continue
                        dts = packet.dts if packet.dts is not None else packet.pts
                        stamp = Fraction(dts) * packet.time_base
                        if last_dts is not None and stamp <= last_dts:
                            raise UndecodableVideo(f"part {number} ({Path(part).name}) overlaps the part before it "
                                                   "(its timestamps do not follow on)")
                        last_dts = stamp
                        while pending is not None and _seconds(pending) <= float(stamp):
                            pending.stream = audio_out
                            out.mux(pending)
                            audio_count += 1
                            pending = next(audio_iter, None)
                        shown = Fraction(packet.pts) * packet.time_base
                        start_time = shown if start_time is None else min(start_time, shown)
                        end_time = max(end_time, shown + (packet.duration or 0) * packet.time_base)
                        packet.stream = video_out
                        out.mux(packet)
                        frames += 1
            while pending is not None:
                pending.stream = audio_out
                out.mux(pending)
                audio_count += 1
                pending = next(audio_iter, None)
    except (ValueError, av.error.FFmpegError) as exc:  # a container that cannot hold the parts' codec, say
        Path(output_path).unlink(missing_ok=True)
        raise UnsupportedVideoOutput(f"cannot stitch the parts into a {fmt} file: {exc}") from exc
    except BaseException:
        Path(output_path).unlink(missing_ok=True)
        raise
    finally:
        if audio_file is not None:
            audio_file.close()
    return StitchReport(parts=len(parts), frames=frames, audio_packets=audio_count, duration_s=float(end_time - (start_time or 0)),
                        seconds=round(time.perf_counter() - started, 3), bytes=Path(output_path).stat().st_size)
