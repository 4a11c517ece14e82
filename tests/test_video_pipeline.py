"""pipeline.video on small synthetic clips (PyAV-made, a real photograph as the face): probing and its
refusals, segment plans, the whole-clip fusion and its timing, audio and metadata, segments stitched
back, landmark smoothing, the bounded pipeline, and the CLI."""

from __future__ import annotations

import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from devtools.clips import ClipSpec, make_clip
from devtools.standins import write_test_models
from function.problems import as_problem
from pipeline import ConfigError, FuseOptions, Fuser, NoSourceFace, Settings, VideoLimits, load_fuser
from pipeline.errors import (
    NotAVideo,
    NoVideoStream,
    UnsupportedVideoCodec,
    UnsupportedVideoOutput,
    VariableFrameRate,
    VideoTooLarge,
    VideoTooLong,
)
from pipeline.faces import Face
from pipeline.selection import Selection
from pipeline.video import (
    FaceTracker,
    Segment,
    VideoInfo,
    VideoOptions,
    codec_for,
    fuse_video,
    plan_segments,
    probe,
    stitch,
)

from .conftest import shared_file
from .test_cli import assert_one_line_error, run

BLANK = (9, 10, 11)  # frames of the main clip without a face
LOSSLESS = VideoOptions(crf=0)  # decoded output frames are then exactly the frames handed to the encoder


@pytest.fixture(scope="module")
def photo() -> Path:
    return shared_file("images", "obama.jpg")


@pytest.fixture(scope="module")
def source() -> bytes:
    return shared_file("images", "biden.jpg").read_bytes()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def clip(clips: Path, photo: Path) -> Path:
    """2 s at 8 fps, a keyframe every 4 frames, AAC audio, no face in frames 9-11."""
    return make_clip(clips / "clip.mp4", photo, ClipSpec(frames=16, fps=Fraction(8), gop=4, audio=True, blank=BLANK))


@pytest.fixture(scope="module")
def fixed_face_fuser(tmp_path_factory: pytest.TempPathFactory) -> Fuser:
    """Stand-ins throughout, the detector too (one fixed face, whatever the frame): fast, for long clips."""
    root = tmp_path_factory.mktemp("fixed-face-models")
    write_test_models(root, detector=None)
    return load_fuser(Settings(model_path=root, cache_path=tmp_path_factory.mktemp("cache")))


def decoded(path: Path) -> list[tuple[Fraction, np.ndarray]]:
    """Each frame's time and its planes (yuv420p, the encoder's format) in display order."""
    with av.open(str(path)) as container:
        return [(frame.pts * frame.time_base, frame.to_ndarray(format="yuv420p")) for frame in container.decode(video=0)]


def stream_seconds(path: Path) -> tuple[Fraction, Fraction]:
    """The durations the container states for its video and audio streams, as a player reads them."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        return video.duration * video.time_base, audio.duration * audio.time_base


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]


@pytest.fixture(scope="module")
def plan(clip: Path) -> list[Segment]:
    return plan_segments(probe(clip), 1.0)


@pytest.fixture(scope="module")
def whole(fuser: Fuser, source: bytes, clip: Path, plan: list[Segment], clips: Path):
    """The whole clip fused losslessly, with tracking reset and keyframes forced at the plan's cuts."""
    out = clips / "whole.mp4"
    report = fuse_video(fuser, source, clip, out, LOSSLESS, boundaries=[s.start_frame for s in plan])
    return out, report


# -- probe ----------------------------------------------------------------------------------------
def test_probe_reads_what_the_clip_is(clip: Path):
    info = probe(clip)
    assert (info.width, info.height, info.frames, info.fps) == (320, 240, 16, Fraction(8))
    assert info.duration_s == 2.0 and info.codec == "h264"
    assert info.keyframes == [0, 4, 8, 12]
    assert info.has_audio and info.audio_codec == "aac"
    assert VideoInfo.from_dict(json.loads(json.dumps(info.as_dict()))) == info


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_ntsc_rate_is_constant_even_in_milliseconds(suffix: str, photo: Path, tmp_path: Path):
    """29.97 fps in Matroska's millisecond timestamps (33 or 34 ms apart) is a constant rate, exactly."""
    spec = ClipSpec(frames=12, fps=Fraction(30000, 1001), width=96, height=64)
    info = probe(make_clip(tmp_path / f"ntsc{suffix}", photo, spec))
    assert (info.fps, info.frames, info.duration_s) == (Fraction(30000, 1001), 12, 12 * 1001 / 30000)


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(("case", "error", "status"), [
    ("junk", NotAVideo, 415),
    ("jpeg", NotAVideo, 415),
    ("audio-only", NoVideoStream, 422),
    ("ffvhuff-codec", UnsupportedVideoCodec, 415),
    ("too-long", VideoTooLong, 413),
    ("too-large", VideoTooLarge, 413),
    ("variable-rate", VariableFrameRate, 422),
])
def test_probe_refuses_what_we_do_not_fuse(case: str, error: type, status: int, tmp_path: Path, photo: Path, clip: Path):
    limits = VideoLimits()
    if case == "junk":
        path = tmp_path / "junk.mp4"
        path.write_bytes(b"not a video at all " * 100)
    elif case == "jpeg":
        path = photo
    elif case == "audio-only":
        path = _audio_only(tmp_path / "tone.m4a")
    elif case == "ffvhuff-codec":
        path = make_clip(tmp_path / "ffvhuff.avi", photo, ClipSpec(frames=3, codec="ffvhuff"))
    elif case == "variable-rate":
        path = make_clip(tmp_path / "vfr.mp4", photo, ClipSpec(frames=9, vfr=True))
    else:
        path = clip
        limits = VideoLimits(max_seconds=1.5) if case == "too-long" else VideoLimits(max_pixels=320 * 239)
    with pytest.raises(error) as caught:
        probe(path, limits)
    problem = as_problem(caught.value)
    assert problem is not None and problem.status == status and problem.code == caught.value.code


def test_video_limits_from_env():
    limits = VideoLimits.from_env({"VIDEO_MAX_SECONDS": "30", "VIDEO_MAX_PIXELS": "2073600", "VIDEO_SEGMENT_SECONDS": "2.5"})
    assert (limits.max_seconds, limits.max_pixels, limits.segment_seconds) == (30.0, 2073600, 2.5)
    with pytest.raises(ValueError, match="VIDEO_MAX_SECONDS.*VIDEO_SEGMENT_SECONDS"):
        VideoLimits.from_env({"VIDEO_MAX_SECONDS": "long", "VIDEO_SEGMENT_SECONDS": "0"})


# -- segments ---------------------------------------------------------------------------------------
def _info(frames: int, keyframes: list[int], fps: int = 25) -> VideoInfo:
    return VideoInfo(width=64, height=64, fps=Fraction(fps), time_base=Fraction(1, fps), frames=frames,
                     duration_s=frames / fps, codec="h264", pix_fmt="yuv420p", keyframes=keyframes)


@pytest.mark.parametrize(("frames", "keyframes", "seconds"), [
    (24, [0, 6, 12, 18], 1.0),
    (1500, list(range(0, 1500, 250)), 4.0),  # x264's default keyint: cuts every 10 s at best
    (1500, list(range(0, 1500, 12)), 4.0),
    (1501, list(range(0, 1501, 1)), 4.0),  # all-intra
    (100, [0], 1.0),  # one keyframe: one segment
    (100, [0, 3, 97], 1.0),
])
def test_segments_cut_at_keyframes_and_cover_every_frame_once(frames: int, keyframes: list[int], seconds: float):
    info = _info(frames, keyframes)
    plan = plan_segments(info, seconds)
    assert plan[0].start_frame == 0 and plan[-1].end_frame == frames
    assert all(a.end_frame == b.start_frame for a, b in zip(plan, plan[1:], strict=False))
    assert all(s.start_frame in keyframes and s.frames > 0 for s in plan)
    assert [s.index for s in plan] == list(range(len(plan)))
    target = seconds * 25
    if keyframes == list(range(0, frames, 1)) or keyframes == list(range(0, frames, 12)):
        assert all(abs(s.frames - target) <= 12 for s in plan[:-1]) and plan[-1].frames < 1.5 * target + 12
    assert plan[0].start_s == 0.0 and plan[-1].end_s == pytest.approx(frames / 25)
    assert [Segment.from_dict(s.as_dict()) for s in plan] == plan


# -- whole clip ------------------------------------------------------------------------------------
def test_whole_clip_keeps_frames_timestamps_and_audio(clip: Path, whole, plan):
    out, report = whole
    before, after = probe(clip), probe(out)
    assert {s.start_frame for s in plan} <= set(after.keyframes)  # boundaries= starts a GOP at each cut
    assert (after.frames, after.fps, after.duration_s) == (before.frames, before.fps, before.duration_s)
    assert [t for t, _ in decoded(out)] == [t for t, _ in decoded(clip)]
    assert stream_seconds(out) == stream_seconds(clip)
    assert audio_packets(out) == audio_packets(clip)  # copied, not re-encoded
    assert report.frames == 16 and report.codec == "libx264"
    assert {"decode", "detect", "swap", "paste", "encode"} <= set(report.stages_ms)


def test_frames_without_a_face_pass_through_unchanged(clip: Path, whole):
    out, report = whole
    assert (report.frames_without_face, report.frames_swapped) == (len(BLANK), 16 - len(BLANK))
    original, fused = decoded(clip), decoded(out)
    for i, ((_, a), (_, b)) in enumerate(zip(original, fused, strict=True)):
        if i in BLANK:
            assert np.array_equal(a, b), f"frame {i} has no face and must come out as it went in"
        else:
            assert np.abs(a.astype(int) - b.astype(int)).max() > 40, f"frame {i}'s face was not swapped"


def test_only_the_swapped_face_region_changes(fuser: Fuser, source: bytes, photo: Path, tmp_path: Path):
    """A fused frame is the decoded frame with the face's region replaced: far from the face every
    pixel is exactly as decoded (no round trip through BGR), near it the swap shows."""
    clip = make_clip(tmp_path / "small-face.mp4", photo, ClipSpec(frames=4, width=480, height=270, face_height=0.3))
    out = tmp_path / "out.mp4"
    assert fuse_video(fuser, source, clip, out, LOSSLESS).frames_swapped == 4
    for (_, before), (_, after) in zip(decoded(clip), decoded(out), strict=True):
        luma_before, luma_after = before[:270].astype(int), after[:270].astype(int)
        assert np.array_equal(luma_before[:, :60], luma_after[:, :60])
        assert np.array_equal(luma_before[:, -60:], luma_after[:, -60:])
        assert np.abs(luma_before[100:170, 200:280] - luma_after[100:170, 200:280]).max() > 40


def test_segments_stitched_equal_the_whole_clip(fuser: Fuser, source: bytes, clip: Path, plan, whole, tmp_path: Path):
    """With the whole clip's keyframes and tracking resets at the same cuts and a lossless encoder, the
    stitched clip decodes to exactly the whole clip's frames; its audio is the input's, byte for byte."""
    assert len(plan) == 2
    parts = []
    for segment in reversed(plan):  # the order segments are fused in does not matter
        part = tmp_path / f"part-{segment.index}.partial"  # a temporary name: `suffix` names the container
        report = fuse_video(fuser, source, clip, part, LOSSLESS, segment=segment, suffix=".mp4")
        assert report.frames == segment.frames and report.segment == segment.index
        parts.insert(0, part)
    with av.open(str(parts[0])) as part:
        assert not part.streams.audio  # parts carry no audio
    stitched = tmp_path / "stitched.mp4"
    report = stitch(parts, stitched, clip, suffix=".mp4")
    assert report.frames == 16 and report.duration_s == 2.0 and report.audio_packets == len(audio_packets(clip))
    info = probe(stitched)
    assert (info.frames, info.duration_s, info.fps) == (16, 2.0, Fraction(8))
    expected, got = decoded(whole[0]), decoded(stitched)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(expected, got, strict=True))
    assert audio_packets(stitched) == audio_packets(clip)
    assert stream_seconds(stitched) == stream_seconds(clip)


def test_stitch_refuses_parts_that_overlap(fixed_face_fuser: Fuser, source: bytes, clip: Path, plan, tmp_path: Path):
    part = tmp_path / "part.mp4"
    fuse_video(fixed_face_fuser, source, clip, part, VideoOptions(), segment=plan[1])
    with pytest.raises(Exception, match="overlaps"):
        stitch([part, part], tmp_path / "twice.mp4", None)
    assert not (tmp_path / "twice.mp4").exists()


def test_rotation_pixel_aspect_and_colour_are_kept(fuser: Fuser, source: bytes, photo: Path, tmp_path: Path):
    spec = ClipSpec(frames=6, rotation=90, bt709=True, sample_aspect_ratio=Fraction(4, 3))
    clip = make_clip(tmp_path / "turned.mov", photo, spec)
    before = probe(clip)
    assert before.rotation == 90 and before.colorspace == 1
    out = tmp_path / "turned-out.mkv"
    fuse_video(fuser, source, clip, out, VideoOptions())
    segment = plan_segments(before, 10.0)[0]
    part, stitched = tmp_path / "part.mp4", tmp_path / "stitched.mp4"
    fuse_video(fuser, source, clip, part, VideoOptions(), segment=segment)
    stitch([part], stitched, clip)
    for path in (out, stitched):
        after = probe(path)
        assert (after.rotation, after.display_matrix) == (before.rotation, before.display_matrix)
        assert after.sample_aspect_ratio == Fraction(4, 3)
        assert (after.colorspace, after.color_primaries, after.color_trc, after.color_range) == (1, 1, 1, 1)


# -- output choices and failures ------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "options", "needle"), [
    ("out.gif", VideoOptions(), "must end in"),
    ("out.mp4", VideoOptions(codec="libvpx-vp9"), "cannot hold libvpx-vp9"),
    ("out.webm", VideoOptions(codec="libx264"), "cannot hold libx264"),
    ("out.mp4", VideoOptions(crf=60), "crf for libx264"),
])
def test_outputs_we_do_not_write_are_refused_as_400(name: str, options: VideoOptions, needle: str):
    with pytest.raises(UnsupportedVideoOutput, match=needle) as caught:
        codec_for(name, options)
    assert as_problem(caught.value).status == 400


@pytest.mark.parametrize(("kwargs", "needle"), [({"crf": -1}, "crf"), ({"preset": "warp"}, "preset"),
                                                ({"codec": "mjpeg"}, "codec")])
def test_bad_video_options_name_the_option(kwargs: dict, needle: str):
    with pytest.raises(UnsupportedVideoOutput, match=needle):
        VideoOptions(**kwargs)


def test_nvenc_is_used_only_where_it_opens():
    try:
        codec = codec_for("out.mp4", VideoOptions(codec="h264_nvenc"))
    except UnsupportedVideoOutput as exc:
        assert "h264_nvenc cannot be opened on this machine" in exc.message
    else:
        assert codec == "h264_nvenc"


def test_webm_refuses_audio_it_cannot_copy(fuser: Fuser, source: bytes, clip: Path, tmp_path: Path):
    with pytest.raises(UnsupportedVideoOutput, match="aac"):
        fuse_video(fuser, source, clip, tmp_path / "out.webm", VideoOptions())
    assert not (tmp_path / "out.webm").exists()


def test_no_source_face_fails_before_any_frame(fuser: Fuser, clip: Path, tmp_path: Path):
    blank = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="bgr24").to_image()
    blank.save(tmp_path / "blank.png")
    with pytest.raises(NoSourceFace):
        fuse_video(fuser, (tmp_path / "blank.png").read_bytes(), clip, tmp_path / "out.mp4", VideoOptions())
    assert not (tmp_path / "out.mp4").exists()


# -- bounded pipeline ---------------------------------------------------------------------------------
def test_frames_in_flight_stay_bounded_on_a_long_clip(fixed_face_fuser: Fuser, source: bytes, photo: Path, tmp_path: Path):
    clip = make_clip(tmp_path / "long.mp4", photo, ClipSpec(frames=240, width=96, height=64, gop=48))
    report = fuse_video(fixed_face_fuser, source, clip, tmp_path / "out.mp4", VideoOptions(), queue_frames=2)
    assert report.frames == 240 and report.frames_swapped == 240
    # three queues of 2, and one frame in the hands of each of the detector, the fusion and the encoder
    assert 0 < report.frames_in_flight_peak <= 3 * 2 + 3


def test_a_failing_stage_stops_every_thread_and_leaves_no_output(fixed_face_fuser: Fuser, source: bytes, photo: Path,
                                                                 tmp_path: Path):
    clip = make_clip(tmp_path / "clip.mp4", photo, ClipSpec(frames=48, width=96, height=64))
    seen = []

    def progress(done: int) -> None:
        seen.append(done)
        if done == 5:
            raise RuntimeError("the caller gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        fuse_video(fixed_face_fuser, source, clip, tmp_path / "out.mp4", VideoOptions(), progress=progress)
    assert seen == [1, 2, 3, 4, 5]
    assert not (tmp_path / "out.mp4").exists()
    assert not [t for t in threading.enumerate() if t.name in ("video-decode", "video-detect", "video-encode")]


# -- smoothing ----------------------------------------------------------------------------------------
KPS = np.array([[130, 120], [170, 120], [150, 140], [135, 160], [165, 160]], np.float64)
BOX = np.array([110, 90, 190, 190], np.float64)


def _noisy(rng: np.random.Generator, shift: np.ndarray, sigma: float = 1.5) -> Face:
    return Face(bbox=(BOX + np.tile(shift, 2) + rng.normal(0, sigma, 4)).astype(np.float32), score=0.9,
                kps=(KPS + shift + rng.normal(0, sigma, (5, 2))).astype(np.float32))


def _jitter(kps: list[np.ndarray]) -> float:
    """Mean frame-to-frame movement of the landmarks, px."""
    return float(np.mean([np.linalg.norm(b - a, axis=1).mean() for a, b in zip(kps, kps[1:], strict=False)]))


def test_smoothing_steadies_a_still_face():
    rng = np.random.default_rng(7)
    tracker = FaceTracker(fps=25)
    raw = [_noisy(rng, np.zeros(2)) for _ in range(100)]
    smooth = [tracker.update([face])[0] for face in raw]
    assert _jitter([f.kps for f in smooth]) < 0.4 * _jitter([f.kps for f in raw])
    assert np.abs(np.mean([f.kps for f in smooth[20:]], axis=0) - KPS).max() < 1.0  # steadied where it is


def test_a_still_face_under_sensor_noise_is_steadied_in_the_fused_clip(fuser: Fuser, source: bytes, photo: Path,
                                                                        tmp_path: Path):
    """The real detector on a noisy clip of a still face: its landmarks wander from frame to frame;
    the ones the swap is aligned on wander less than half as much."""
    clip = make_clip(tmp_path / "still.mp4", photo, ClipSpec(frames=12, still=True, noise=12, crf=30, preset="ultrafast"))
    jitter = fuse_video(fuser, source, clip, tmp_path / "out.mp4", VideoOptions()).landmark_jitter_px
    assert jitter["detected"] > 0.05
    assert jitter["smoothed"] < 0.6 * jitter["detected"]


def test_smoothing_follows_a_moving_face_and_restarts_at_a_cut():
    rng = np.random.default_rng(8)
    tracker = FaceTracker(fps=25)
    for i in range(40):  # 4 px a frame, 100 px a second
        shift = np.array([4.0 * i, 0.0])
        out = tracker.update([_noisy(rng, shift)])[0]
    assert np.abs(out.kps - (KPS + shift)).mean() < 4.0  # within a frame's movement of the truth
    cut = _noisy(rng, np.array([600.0, 300.0]))
    after = tracker.update([cut])[0]
    assert np.array_equal(after.kps, cut.kps) and np.array_equal(after.bbox, cut.bbox)


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_fuses_a_video(tmp_path: Path, clip: Path, photo: Path):
    models = tmp_path / "models"
    write_test_models(models, detector=None)
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(tmp_path / "cache")}
    source = str(shared_file("images", "biden.jpg"))
    out = tmp_path / "out.mkv"
    fused = run(["fuse", source, str(clip), "-o", str(out), "--crf", "23", "--preset", "ultrafast"], env)
    assert fused.returncode == 0, fused.stderr
    report = json.loads(fused.stdout)
    assert report["frames"] == 16 and report["codec"] == "libx264"
    assert probe(out).frames == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "models", "out.mkv"]  # no temporaries left
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"nothing here" * 50)
    assert_one_line_error(run(["fuse", source, str(junk), "-o", str(tmp_path / "x.mp4")], env), 3, "not a video")
    assert_one_line_error(run(["fuse", source, str(clip), "-o", str(tmp_path / "x.mp4"), "--crf", "70"], env), 2, "crf")
    assert not (tmp_path / "x.mp4").exists()


def test_the_report_times_every_frames_detection_apart_from_the_sources(tmp_path: Path, photo: Path, source: bytes,
                                                                         tmp_path_factory: pytest.TempPathFactory):
    """`detect` in the report is the frames' detection (summed over the clip), not the source's, whose
    decode, detect and embed are one `source` stage: the report once showed the source's 5 ms as the
    whole clip's detection."""
    root = tmp_path_factory.mktemp("slow-detector-models")
    write_test_models(root, detector=None)
    fuser = load_fuser(Settings(model_path=root, cache_path=tmp_path_factory.mktemp("cache")))
    real_detect = fuser.detector.detect
    calls = []

    def slow_detect(bgr: np.ndarray):
        calls.append(bgr.shape)
        time.sleep(0.02)  # at least 20 ms a call, whatever the machine
        return real_detect(bgr)

    fuser.detector.detect = slow_detect  # type: ignore[method-assign]
    clip = make_clip(tmp_path / "clip.mp4", photo, ClipSpec(frames=10, width=96, height=64))
    report = fuse_video(fuser, source, clip, tmp_path / "out.mp4", VideoOptions())
    frame_calls = sum(1 for shape in calls if shape[:2] == (64, 96))
    assert frame_calls == 10 and len(calls) == 11  # every frame, and the source once
    assert report.stages_ms["detect"] >= 10 * 20
    assert report.stages_ms["source"] >= 20


def test_faces_reference_swaps_only_frames_whose_face_matches(fuser: Fuser, source: bytes, clip: Path, photo: Path,
                                                              tmp_path: Path):
    """faces=reference on a video: the reference face is embedded once for the clip; frames whose face
    matches it are swapped, a reference of someone else leaves every frame as it was."""
    same = VideoOptions(fuse=FuseOptions(selection=Selection(mode="reference", reference_threshold=0.5),
                                         reference=photo.read_bytes()))
    report = fuse_video(fuser, source, clip, tmp_path / "same.mp4", same)
    assert report.frames_swapped == 16 - len(BLANK)
    other = VideoOptions(fuse=FuseOptions(selection=Selection(mode="reference", reference_threshold=0.99),
                                          reference=source))
    report = fuse_video(fuser, source, clip, tmp_path / "other.mp4", other)
    assert report.frames_swapped == 0 and report.frames_without_face == 16


def test_h264_goes_to_nvenc_by_default_only_where_it_opens(monkeypatch: pytest.MonkeyPatch):
    """H.264 outputs without a codec use NVENC on a machine that opens it (the GPU encodes while the CPU
    fuses), libx264 elsewhere or with VIDEO_NVENC=false; a codec asked for by name is kept."""
    from pipeline.video import output

    monkeypatch.delenv("VIDEO_NVENC", raising=False)
    monkeypatch.setattr(output, "_nvenc_opens", lambda: False)  # this machine: no NVIDIA driver
    assert output.codec_for("out.mp4", VideoOptions()) == "libx264"
    monkeypatch.setattr(output, "_nvenc_opens", lambda: True)  # a GPU node
    assert output.codec_for("out.mp4", VideoOptions()) == "h264_nvenc"
    assert output.codec_for("out.mkv", VideoOptions()) == "h264_nvenc"
    assert output.codec_for("out.webm", VideoOptions()) == "libvpx-vp9"
    assert output.codec_for("out.mp4", VideoOptions(codec="libx264")) == "libx264"
    monkeypatch.setenv("VIDEO_NVENC", "false")
    assert output.codec_for("out.mp4", VideoOptions()) == "libx264"
    monkeypatch.setenv("VIDEO_NVENC", "perhaps")
    with pytest.raises(ConfigError, match="VIDEO_NVENC"):
        VideoLimits.from_env()
