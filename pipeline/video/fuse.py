"""`fuse_video`: the same fusion as for an image, on every frame of a clip or of one segment.

The source's face is embedded once per call; every frame is detected (SCRFD's file has a fixed batch
of 1, so frames are detected one by one), its faces are followed and smoothed across frames
(`smoothing.FaceTracker`) and the smoothed faces are handed to `Fuser.fuse`, which then skips its own
detection. Frames run through a bounded pipeline (`stages`): decode (and turn into BGR), detect,
track-swap-paste (in the caller's thread), encode, each in its own thread with a few frames between
them, so the detector's run on one frame overlaps the swap of the frame before (ONNX Runtime's `run`
is thread-safe and releases the GIL, as do OpenCV and FFmpeg).

A frame with no face to swap is passed to the encoder as it was decoded (the very same pixels, no
colour conversion) and counted. Timestamps are the input's (each output frame carries its input
frame's pts in the input's time base), as are rotation, pixel aspect and colour properties.

Whole clip (`segment=None`): the audio stream is copied packet for packet. `boundaries` (frame
indices; the segment plan's starts) make the whole-clip fusion match the segmented one: tracking is
reset there and the encoder starts a new closed GOP there. One segment: only its frames, no audio, in
a part file `stitch` joins by stream copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import NoMatchingFace, UndecodableVideo, UnsupportedVideoOutput
from ..faces import Face
from ..fuser import Fuser, runtime_failures
from ..images import DecodedImage
from ..selection import eligible
from ..sources import check_count, source_key
from ..timing import StageTimer
from .info import VideoInfo, probe
from .output import VideoOptions, add_video_stream, check_audio, codec_for, container_of
from .pyav import av
from .segments import Segment
from .smoothing import FaceTracker
from .stages import Channel, Pipeline

DEFAULT_QUEUE_FRAMES = 4
_REGION_MARGIN = 1.5
_OPENCV_601 = frozenset({"DEFAULT", "ITU601", "SMPTE170M"})
_END = ("end",)


def _frames(inbox: Channel, outbox: Channel) -> Iterator[tuple]:
    """The frame items of `inbox`, in order; audio packets and the end marker pass on to `outbox` as they
    are (the stages after this one need them), and the end marker ends the iteration."""
    while True:
        item = inbox.get()
        if item is _END or item[0] == "audio":
            outbox.put(item)
            if item is _END:
                return
            continue
        yield item
# AVColorSpace values -> the matrix swscale converts with; the same one both ways, so pixels outside
# the swapped face come back as they went (within rounding)
_SWS_COLORSPACE = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}


@dataclass
class VideoReport:
    """What a video fusion did: frames, faces, speed and where the time went."""

    frames: int
    frames_swapped: int
    frames_without_face: int
    seconds: float
    fps: float  # frames fused per second of wall time
    stages_ms: dict[str, float]  # total per stage; decode and encode run beside the fusion
    codec: str
    segment: int | None = None
    frames_in_flight_peak: int = 0  # frames decoded but not yet handed to the encoder, at most
    queue_frames: int = DEFAULT_QUEUE_FRAMES
    # mean frame-to-frame landmark movement of tracked faces, as detected and after smoothing
    landmark_jitter_px: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_per_frame(self) -> dict[str, float]:
        return {name: round(ms / max(self.frames, 1), 2) for name, ms in self.stages_ms.items()}

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["ms_per_frame"] = self.ms_per_frame
        return out


def fuse_video(
    fuser: Fuser,
    sources: bytes | list[bytes],
    input_path: str | Path,
    output_path: str | Path,
    options: VideoOptions,
    segment: Segment | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    info: VideoInfo | None = None,
    boundaries: Iterable[int] = (),
    queue_frames: int = DEFAULT_QUEUE_FRAMES,
    suffix: str | None = None,
) -> VideoReport:
    """Fuse the clip (or one segment of it) at `input_path` into `output_path`.

    The container and codec follow `output_path`'s extension, or `suffix` (".mp4") where that path is
    a temporary name. Write parts as .mp4 or .mov: they keep the input's timestamps exactly (Matroska
    rounds them to milliseconds). `progress` is called with the number of frames fused so far, after
    each frame. `info` saves a second probe where the caller has one. The output is written in place
    (the caller writes to a temporary name and renames, for atomicity); it is removed again when the
    fusion fails.
    """
    started = time.perf_counter()
    info = info or probe(input_path)
    named = f"output{suffix}" if suffix else output_path
    fmt = container_of(named)
    codec = codec_for(named, options)
    whole = segment is None
    if whole:
        check_audio(fmt, info.audio_codec)
    if Path(output_path).resolve() == Path(input_path).resolve():
        raise UnsupportedVideoOutput("the output would overwrite the input")
    sources = sources if isinstance(sources, list) else [sources]
    check_count(len(sources))  # 1..8 images, averaged as for a still image (pipeline/sources.py)
    fuse_timer = StageTimer()
    source_timer = StageTimer()  # its detect and embed are not the frames': reported as one `source` stage
    with fuse_timer.stage("source"):
        source_images = [fuser.decode(source, "source") for source in sources]
        key = source_key(sources)
        # embedded once here; each frame finds it by key (and the swapper role)
        fuser.source_face(source_images, source_timer, key, options.fuse.swapper, options.fuse.detector_angles)
        if options.fuse.selection.mode == "reference":  # the reference face too: embedded once, not per frame
            embedding = fuser.reference_embedding(options.fuse.reference, source_timer, options.fuse.detector_angles)
            options = replace(options, fuse=replace(options.fuse, reference=embedding))
    first = segment.start_frame if segment is not None else 0
    last = segment.end_frame if segment is not None else info.frames
    resets = {first, *boundaries}
    try:
        report = _run(fuser, source_images, key, info, Path(input_path), Path(output_path), fmt, codec, options,
                      first, last, resets, whole, progress, queue_frames, fuse_timer)
    except BaseException:
        Path(output_path).unlink(missing_ok=True)
        raise
    report.segment = segment.index if segment is not None else None
    report.seconds = round(time.perf_counter() - started, 3)
    report.fps = round(report.frames / report.seconds, 2) if report.seconds > 0 else 0.0
    return report


def _run(fuser: Fuser, source_images: list[DecodedImage], key: str, info: VideoInfo, input_path: Path, output_path: Path,
         fmt: str, codec: str, options: VideoOptions, first: int, last: int, resets: set[int], whole: bool,
         progress: Callable[[int], None] | None, queue_frames: int, fuse_timer: StageTimer) -> VideoReport:
    pipeline = Pipeline()
    decoded_q = Channel(pipeline, queue_frames)
    detected_q = Channel(pipeline, queue_frames)
    fused_q = Channel(pipeline, queue_frames)
    decode_timer, detect_timer, encode_timer = StageTimer(), StageTimer(), StageTimer()
    counts = {"decoded": 0, "encoded": 0, "peak": 0}
    colorspace = _SWS_COLORSPACE.get(info.colorspace, "DEFAULT")
    with av.open(str(input_path), metadata_errors="ignore") as source_file, \
            av.open(str(output_path), "w", format=fmt) as out:
        video = source_file.streams.video[0]
        video.thread_type = "AUTO"
        audio_in = source_file.streams.audio[0] if whole and source_file.streams.audio else None
        stream = add_video_stream(out, codec, info, options, forced_keyframes=len(resets) > 1)
        audio_out = out.add_stream_from_template(audio_in) if audio_in is not None else None
        pix_fmt = stream.codec_context.pix_fmt

        def decode() -> None:
            if first > 0:  # seek to the keyframe the segment starts at (or the one before it)
                source_file.seek(info.pts_of(first) - int(info.frame_ticks / 2), stream=video, backward=True)
            streams = [video] + ([audio_in] if audio_in is not None else [])
            try:
                for packet in source_file.demux(*streams):
                    if packet.stream is audio_in:
                        if packet.size:
                            decoded_q.put(("audio", packet))
                        continue
                    with decode_timer.stage("decode"):
                        frames = packet.decode()
                    for frame in frames:
                        index = info.index_of(frame.pts)
                        if index < first:
                            continue
                        if index >= last:
                            if audio_in is None:
                                decoded_q.put(_END)
                                return
                            continue
                        with decode_timer.stage("to_bgr"):  # here, not in the fuse thread, the busiest one
                            bgr = frame.to_ndarray(format="bgr24", src_colorspace=colorspace)
                        decoded_q.put(("frame", index, frame, bgr))
                        counts["decoded"] += 1
                        counts["peak"] = max(counts["peak"], counts["decoded"] - counts["encoded"])
            except av.error.FFmpegError as exc:
                raise UndecodableVideo(f"the video could not be decoded: {exc}") from exc
            decoded_q.put(_END)

        def detect() -> None:
            for _, index, frame, bgr in _frames(decoded_q, detected_q):
                with detect_timer.stage("detect"), runtime_failures():
                    faces = fuser.detect(DecodedImage(bgr=bgr), options.fuse.detector_angles)
                detected_q.put(("frame", index, frame, bgr, faces))

        def encode() -> None:
            while True:
                item = fused_q.get()
                if item is _END:
                    break
                if item[0] == "audio":
                    packet = item[1]
                    packet.stream = audio_out
                    with encode_timer.stage("mux"):
                        out.mux(packet)
                    continue
                _, index, frame = item
                frame.pict_type = av.video.frame.PictureType.I if index in resets else av.video.frame.PictureType.NONE
                with encode_timer.stage("encode"):
                    packets = stream.encode(frame)
                counts["encoded"] += 1
                with encode_timer.stage("mux"):
                    out.mux(packets)
            with encode_timer.stage("encode"):
                out.mux(stream.encode(None))

        pipeline.start("video-decode", decode)
        pipeline.start("video-detect", detect)
        pipeline.start("video-encode", encode)
        tracker = FaceTracker(float(info.fps))
        swapped = without = done = 0
        try:
            for _, index, frame, bgr, faces in _frames(detected_q, fused_q):
                if index in resets:
                    tracker.reset()
                with fuse_timer.stage("track"):
                    faces = tracker.update(faces)
                fused, changed = _fuse_frame(fuser, source_images, key, frame, bgr, faces, options, fuse_timer,
                                             colorspace, pix_fmt, info.color_range == 2)
                swapped += changed
                without += not changed
                fused_q.put(("frame", index, fused))
                done += 1
                if progress is not None:
                    progress(done)
        except BaseException as exc:
            pipeline.fail(exc)
        pipeline.join()
    if done != last - first:
        raise UndecodableVideo(f"decoded {done} frames where {last - first} were expected; the file may be truncated")
    total = StageTimer()  # a stage timed in two threads (or for the source and the frames) adds up
    for timer in (decode_timer, detect_timer, fuse_timer, encode_timer):
        for name, ms in timer.ms.items():
            total.add(name, ms)
    stages = total.rounded()
    return VideoReport(frames=done, frames_swapped=swapped, frames_without_face=without, seconds=0.0, fps=0.0,
                       stages_ms=stages, codec=codec, frames_in_flight_peak=counts["peak"], queue_frames=queue_frames,
                       landmark_jitter_px=tracker.jitter_px)


def _fuse_frame(fuser: Fuser, source_images: list[DecodedImage], key: str, frame: av.VideoFrame, bgr: np.ndarray,
                faces: list[Face], options: VideoOptions, timer: StageTimer, colorspace: str, pix_fmt: str,
                full_range: bool = False) -> tuple[av.VideoFrame, bool]:
    """The fused frame (`bgr` is `frame` as BGR, `faces` its smoothed faces), and whether a face was
    swapped; a frame without one is returned as it came."""
    image = DecodedImage(bgr=bgr)
    selection = options.fuse.selection
    candidates = eligible(faces, selection.min_face_size)
    if not candidates or (selection.mode == "index" and selection.index not in candidates):
        return frame, False
    try:
        result = fuser.fuse(source_images, image, options.fuse, timer, source_key=key, faces=faces)
    except NoMatchingFace:  # faces=reference: none of this frame's faces is the one asked for
        return frame, False
    if result.report.faces_swapped == 0:
        return frame, False
    with timer.stage("convert"):
        boxes = [face["box"] for face in result.report.faces if face["swapped"]]
        out = _splice(frame, result.image.bgr, _region(boxes, bgr.shape), colorspace, full_range)
        if out is None:
            out = av.VideoFrame.from_ndarray(np.ascontiguousarray(result.image.bgr), format="bgr24").reformat(
                format=pix_fmt, dst_colorspace=colorspace)
            out.pts, out.time_base = frame.pts, frame.time_base
    return out, True


def _region(boxes: list[list[float]], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Rows and columns (even, for 4:2:0 chroma) that hold every pixel the swap may have changed: each
    swapped face's box grown by `_REGION_MARGIN` box sizes on every side. The paste back writes only
    inside the face's aligned crop, which is under twice the box's size for the swapper's and the
    enhancer's templates, turned by up to 45 degrees: within 1.5 box sizes of the box's centre."""
    height, width = shape[:2]
    y0, y1, x0, x1 = height, 0, width, 0
    for bx0, by0, bx1, by1 in boxes:
        mx, my = (bx1 - bx0) * _REGION_MARGIN, (by1 - by0) * _REGION_MARGIN
        y0, y1 = min(y0, int(by0 - my)), max(y1, int(by1 + my) + 1)
        x0, x1 = min(x0, int(bx0 - mx)), max(x1, int(bx1 + mx) + 1)
    y0, x0 = max(y0, 0) // 2 * 2, max(x0, 0) // 2 * 2
    y1, x1 = min(y1 + y1 % 2, height), min(x1 + x1 % 2, width)
    return y0, y1, x0, x1


def _splice(frame: av.VideoFrame, bgr: np.ndarray, region: tuple[int, int, int, int], colorspace: str,
            full_range: bool = False) -> av.VideoFrame | None:
    """The decoded frame with only `region` replaced by the fused pixels (converted to its format), so
    the pixels outside it are exactly as decoded, and converting a region costs a fraction of a
    frame (swscale's BGR to YUV is the slow direction: 18-30 ms for a 1080p frame here, OpenCV's
    BT.601 conversion under 1 ms, so that one is used where the colour matrix is BT.601). None where the
    frame is not 8-bit 4:2:0 or the region is odd-sized (the caller converts the whole frame)."""
    y0, y1, x0, x1 = region
    if frame.format.name != "yuv420p" or y1 <= y0 or x1 <= x0 or (y1 - y0) % 2 or (x1 - x0) % 2:
        return None
    crop = np.ascontiguousarray(bgr[y0:y1, x0:x1])
    if colorspace in _OPENCV_601 and not full_range:  # OpenCV's I420 is BT.601, limited range: 40x faster
        h, w = y1 - y0, x1 - x0
        flat = cv2.cvtColor(crop, cv2.COLOR_BGR2YUV_I420).ravel()  # Y, then U, then V, each packed
        q = h * w // 4
        parts = [flat[:4 * q].reshape(h, w), flat[4 * q:5 * q].reshape(h // 2, w // 2), flat[5 * q:].reshape(h // 2, w // 2)]
    else:
        patch = av.VideoFrame.from_ndarray(crop, format="bgr24").reformat(format="yuv420p", dst_colorspace=colorspace)
        parts = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width] for p in patch.planes]
    frame.make_writable()  # copies the pixels where the decoder still holds them (a reference frame)
    for i, (plane, src) in enumerate(zip(frame.planes, parts, strict=True)):
        step = 1 if i == 0 else 2
        dst = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        dst[y0 // step:y0 // step + src.shape[0], x0 // step:x0 // step + src.shape[1]] = src
    return frame
