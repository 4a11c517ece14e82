"""Video bench: frames per second of the frame pipeline on a 1080p clip with one face, against the naive loop.

    python -m bench.video                   # this CPU, the small stand-ins with the real SCRFD
    python -m bench.video --gpu             # a GPU machine: compute-realistic proxies, EXECUTION_PROVIDERS=cuda
    python -m bench.video --frames 120 --fps 30
    python -m bench.video --fanout --replay  # and the fan-out (bench/video_fanout.py) and replay
                                             # (bench/video_replay.py) tables, in the same run

The clip is synthetic: a real photograph (../shared/images/obama.jpg) on a grey 1920x1080 frame,
moved a few pixels each frame, with an AAC tone as audio (devtools/clips.py). Both rows fuse the
same clip with the same models in the same run:

- naive loop (the baseline): decode every frame into memory, fuse each one as `fuse_bytes` does (the
  source looked up by its hash, detection inside the fusion, no smoothing), then encode them all, one
  stage after the other in one thread;
- pipeline: `pipeline.video.fuse_video`, decode, detect and encode in their own threads beside the
  fusion, bounded queues, landmark smoothing, audio copied.

Per-stage figures are ms per frame; CPU s is the process's CPU time for the run (all threads). In
the pipeline, decode, detect and encode overlap the fusion, so its wall time per frame is about the
slowest thread's; the table names that thread and its largest stage as the bottleneck. The two paths
run alternately (`--repeat`, default 3) and each row is its median run. `frame_pipeline_table` is
the function other benches call for these rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av

from bench.common import SHARED, standin_models, table
from devtools.clips import ClipSpec, make_clip
from pipeline import DecodedImage, FuseOptions, Fuser, Settings, StageTimer, load_fuser
from pipeline.video import VideoOptions, fuse_video, probe

STAGES = ("decode", "to_bgr", "detect", "swap", "paste", "convert", "encode", "mux")
# which thread each stage of the pipeline runs in (the rest: the fuse thread)
THREADS = {"decode": "decode", "to_bgr": "decode", "detect": "detect", "encode": "encode", "mux": "encode"}


def bench_clip(folder: Path, frames: int = 60, fps: int = 25, width: int = 1920, height: int = 1080) -> Path:
    """The 1080p clip with one face and AAC audio that both rows fuse."""
    spec = ClipSpec(frames=frames, width=width, height=height, fps=Fraction(fps), gop=fps * 2, audio=True,
                    face_height=0.6, crf=20, sample_rate=48000)
    return make_clip(folder / f"bench-{width}x{height}-{frames}.mp4", SHARED / "images" / "obama.jpg", spec)


def run_naive(fuser: Fuser, source: bytes, clip: Path, out: Path, options: VideoOptions) -> dict:
    """The baseline: decode all, fuse each frame as an image, encode all; one thread, no smoothing."""
    import hashlib

    info = probe(clip)
    timer = StageTimer()
    started = time.perf_counter()
    frames = []
    with av.open(str(clip)) as container:
        decoding = container.decode(video=0)
        while True:
            with timer.stage("decode"):
                frame = next(decoding, None)
            if frame is None:
                break
            with timer.stage("to_bgr"):
                frames.append((frame.pts, frame.to_ndarray(format="bgr24")))
    key = hashlib.sha256(source).hexdigest()
    fused = []
    for pts, bgr in frames:
        result = fuser.fuse(lambda: fuser.decode(source, "source"), DecodedImage(bgr=bgr), options.fuse, timer,
                            source_key=key)
        fused.append((pts, result.image.bgr))
    with av.open(str(out), "w") as output:
        stream = output.add_stream("libx264", rate=info.fps, options={"crf": str(options.crf), "preset": options.preset})
        stream.width, stream.height, stream.pix_fmt, stream.time_base = info.width, info.height, "yuv420p", info.time_base
        for pts, bgr in fused:
            with timer.stage("convert"):
                frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
            frame.pts, frame.time_base = pts, info.time_base
            with timer.stage("encode"):
                packets = stream.encode(frame)
            with timer.stage("mux"):
                output.mux(packets)
        with timer.stage("encode"):
            output.mux(stream.encode(None))
    seconds = time.perf_counter() - started
    return {"frames": len(frames), "seconds": seconds, "stages_ms": timer.ms, "held": len(frames)}


def _bottleneck(stages_ms: dict[str, float]) -> str:
    """The thread with the most work and its largest stage."""
    per_thread: dict[str, dict[str, float]] = {}
    for stage, ms in stages_ms.items():
        per_thread.setdefault(THREADS.get(stage, "fuse"), {})[stage] = ms
    thread = max(per_thread, key=lambda t: sum(per_thread[t].values()))
    stage = max(per_thread[thread], key=per_thread[thread].get)
    return f"{thread} thread ({stage})"


def frame_pipeline_rows(fuser: Fuser, source: bytes, clip: Path, folder: Path,
                        options: VideoOptions | None = None, repeat: int = 3) -> tuple[list[str], list[list]]:
    """Headers and rows: the naive loop and the pipeline on `clip`, with stages in ms per frame.

    The two are run alternately `repeat` times and each row is its median run by wall time, so a
    change in the machine's load during the bench falls on both."""
    options = options or VideoOptions()
    naive_runs, pipeline_runs = [], []
    for _ in range(repeat):
        cpu = time.process_time()
        naive_runs.append({**run_naive(fuser, source, clip, folder / "naive.mp4", options),
                           "cpu": time.process_time() - cpu})
        cpu = time.process_time()
        report = fuse_video(fuser, source, clip, folder / "pipeline.mp4", options)
        pipeline_runs.append({"frames": report.frames, "seconds": report.seconds, "stages_ms": report.stages_ms,
                              "held": report.frames_in_flight_peak, "cpu": time.process_time() - cpu})
    naive = sorted(naive_runs, key=lambda r: r["seconds"])[len(naive_runs) // 2]
    piped = sorted(pipeline_runs, key=lambda r: r["seconds"])[len(pipeline_runs) // 2]
    headers = ["path", "frames", "wall s", "CPU s", "frames/s", *[f"{s} ms" for s in STAGES], "frames held",
               "bottleneck"]

    def row(name: str, run: dict, neck: str) -> list:
        frames, seconds, stages = run["frames"], run["seconds"], run["stages_ms"]
        return [name, frames, seconds, run["cpu"], frames / seconds, *[stages.get(s, 0.0) / frames for s in STAGES],
                run["held"], neck]

    return headers, [row("naive loop (baseline)", naive, "serial: every stage"),
                     row("pipeline", piped, _bottleneck(piped["stages_ms"]))]


def frame_pipeline_table(fuser: Fuser, source: bytes, clip: Path, folder: Path,
                         options: VideoOptions | None = None, repeat: int = 3) -> str:
    """The frame pipeline's table, with the speed-up over the naive loop under it."""
    headers, rows = frame_pipeline_rows(fuser, source, clip, folder, options, repeat)
    speedup = rows[1][4] / rows[0][4]
    return f"{table(headers, rows)}\npipeline / naive loop: {speedup:.2f}x frames/s"


def _models(gpu: bool, root: Path) -> Settings:
    if gpu:
        from bench.gpu import build_models

        build_models(root, standins=False)
        return Settings(model_path=root, cache_path=root / "cache", execution_providers="cuda")
    standin_models(root, enhancer=False)
    return Settings(model_path=root, cache_path=root / "cache")


def main(argv: list[str] | None = None, extra: Callable[[Fuser, Path, Path], str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3, help="alternate runs of each path; the median is shown")
    parser.add_argument("--gpu", action="store_true", help="compute-realistic proxies on CUDA (a GPU machine)")
    parser.add_argument("--fanout", action="store_true", help="also the fan-out over N = 1, 2, 4 worker processes")
    parser.add_argument("--fanout-seconds", type=float, default=60.0, help="length of the fan-out's clip")
    parser.add_argument("--replay", action="store_true", help="also segment events redelivered, duplicated, "
                                                              "reordered and killed: lost/duplicated/partial")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ff-bench-video-") as tmp:
        folder = Path(tmp)
        settings = _models(args.gpu, folder / "models")
        fuser = load_fuser(settings)
        fuser.exercise()
        source = (SHARED / "images" / "biden.jpg").read_bytes()
        clip = bench_clip(folder, args.frames, args.fps)
        print(f"clip: 1920x1080, {args.frames} frames at {args.fps} fps, one face, AAC audio; "
              f"models: {'proxies on CUDA' if args.gpu else 'stand-ins with the real SCRFD on the CPU'}; "
              f"encoder libx264 crf {VideoOptions().crf} preset {VideoOptions().preset}")
        print(frame_pipeline_table(fuser, source, clip, folder, VideoOptions(fuse=FuseOptions()), args.repeat))
        if extra is not None:
            print(extra(fuser, clip, folder))
    if args.fanout:  # worker processes of the real function behind a local sink (bench/video_fanout.py)
        from bench.video_fanout import fanout_report

        print(fanout_report(seconds=args.fanout_seconds))
    if args.replay:  # prints its own table; every count should be 0
        from bench.video_replay import run as replay

        replay()


if __name__ == "__main__":
    main()
