"""A source the process has not seen, made beside the target (pipeline/overlap.py), against one after the other.

    python -m bench.source_overlap [--requests 30] [--providers cpu|cuda] [--proxies] [--target 1080p|4k]

`Fuser.fuse_bytes` in this process, one request at a time (concurrency 1, where the overlap can pay),
each with source bytes the source cache has not seen (obama.jpg re-encoded at a quality of its own), on a
one-face frame: `beside` is the default (the source decoded, detected and embedded on a helper thread
while the request's thread decodes and detects the target), `in turn` makes the source in the request's
thread (the behaviour before). The two take turns request by request so load from elsewhere hits both
alike. Columns: median and p90 ms per fusion, and the median decode, detect and embed stage sums (the
source's and the target's together). A second table repeats a single source (every request a cache hit:
nothing to overlap) as the control; the two rows should match there.

On a CPU the detector uses every core, so two detections side by side only share them (1.11x slower on
2 CPUs), and the fuser makes sources in turn there; it makes them beside only where the detector runs on
a GPU, where a detection is mostly waiting for the device. `--providers cuda` measures that.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from bench.common import SHARED, frame_with_face, single_face_1080p, standin_models, table

MODES = ("in turn", "beside")


def distinct_sources(count: int) -> list[bytes]:
    """`count` different JPEGs of the same face: the cache keys on the bytes' hash, so each is new."""
    face = cv2.imread(str(SHARED / "images" / "obama.jpg"))
    return [cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 60 + i % 40])[1].tobytes() + bytes(i // 40)
            for i in range(count)]


def _stage(report_ms: list[dict[str, float]], name: str) -> float:
    return statistics.median(t.get(name, 0.0) for t in report_ms)


def run(fuser, sources: list[bytes], target: bytes, new: bool = True) -> list[list]:
    """`new`: the source cache emptied before each fusion. Rows: mode, requests, median and p90 ms, median decode/detect/embed stage sums."""
    times: dict[str, list[float]] = {m: [] for m in MODES}
    stages: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    chosen = fuser.sources_beside  # what this process would do on its own: on a GPU beside, on a CPU in turn
    try:
        for i, source in enumerate(sources):
            for mode in (MODES if i % 2 else MODES[::-1]):
                fuser.sources_beside = mode == "beside"
                if new:  # every source new to both modes
                    fuser._sources.clear()
                t = time.perf_counter()
                result = fuser.fuse_bytes(source, target)
                times[mode].append((time.perf_counter() - t) * 1000)
                stages[mode].append(result.report.timings_ms)
    finally:
        fuser.sources_beside = chosen
    rows = []
    for mode in MODES:
        ms = sorted(times[mode])
        rows.append([mode, len(ms), f"{statistics.median(ms):.2f}", f"{ms[math.ceil(0.9 * len(ms)) - 1]:.2f}",
                     *(f"{_stage(stages[mode], name):.2f}" for name in ("decode", "detect", "embed"))])
    base, new = (statistics.median(times[m]) for m in MODES)
    rows[1].append(f"{new / base:.2f}")
    rows[0].append("")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="fusions per mode")
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--proxies", action="store_true", help="the compute-realistic stand-ins")
    parser.add_argument("--target", default="1080p", choices=("1080p", "4k"))
    args = parser.parse_args(argv)
    from pipeline import Settings, load_fuser

    with tempfile.TemporaryDirectory(prefix="ff-overlap-") as tmp:
        if args.proxies:
            from bench.gpu import build_models

            models = build_models(Path(tmp) / "models", standins=False)
        else:
            models = standin_models(Path(tmp) / "models")
        fuser = load_fuser(Settings.from_env({"MODEL_PATH": str(models), "CACHE_PATH": str(Path(tmp) / "cache"),
                                              "EXECUTION_PROVIDERS": args.providers}))
        target = single_face_1080p() if args.target == "1080p" else frame_with_face(3840, 2160)
        sources = distinct_sources(args.requests)
        fuser.fuse_bytes(sources[0], target)  # first runs out of the way
        headers = ["mode", "requests", "p50 ms", "p90 ms", "decode ms", "detect ms", "embed ms", "/in turn"]
        print(f"{args.target} target, one face, concurrency 1, {args.providers} (this process would make a new "
              f"source {'beside' if fuser.sources_beside else 'in turn'}); a new source each request:")
        print(table(headers, run(fuser, sources, target)))
        print("control, the same source every request (a cache hit: nothing to overlap):")
        print(table(headers, run(fuser, [sources[0]] * max(4, args.requests // 3), target, new=False)))


if __name__ == "__main__":
    main()
