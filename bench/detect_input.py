"""The detector's input: the float blob made on the CPU against the uint8 canvas normalised in the graph.

    python -m bench.detect_input [--reps 40] [--rounds 5] [--providers cpu] [--json out.json]

Why: on GPU pods the CPU per request limits throughput, and `cv2.dnn.blobFromImage` (mean, scale,
BGR->RGB of the 640x640 canvas) was 1-1.5 ms of it on the H100's host, plus 4.9 MB copied to the device
where the uint8 canvas is 1.2 MB (pipeline/pixel_input.py). Both graphs are the real SCRFD prepared as
the server prepares it by default (`build_optimised`, batch 1 as without merging, fp32), one with `pixels=False`
(the float input, the baseline) and one as served now (uint8 input), loaded as the loader loads them;
the detector kind chooses its feed from the session's input type, as in the server.

Per 1920x1080 JPEG frame with one face (bench/common.py, decoded once): `prep` is letterbox + the
session's feed (the blob, or the canvas itself), `detect` the whole `ScrfdDetector.detect` (prep, run,
decoding of boxes and NMS), both medians; `feed MB` is what the run copies to the device on a GPU.
The two graphs take turns for `--rounds` rounds of `--reps` calls each, so load on a shared machine
falls on both. The faces of the two are compared (largest box and keypoint difference in px).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from bench.common import SCRFD, single_face_1080p, table


def _samples(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def detectors(cache: Path, providers: list[str]) -> dict[str, object]:
    """The real SCRFD prepared with a float input (baseline) and with the uint8 pixel input, by label."""
    from pipeline.artefacts import GraphRecipe, build_optimised, fast_load_options, graph_notes
    from pipeline.manifest import ModelEntry
    from pipeline.models import ScrfdDetector
    from pipeline.sessions import create_session

    entry = ModelEntry(role="detector", path=SCRFD, sha256=f"bench-{SCRFD.stat().st_size}", kind="scrfd",
                       category="detector", input_size=(640, 640))
    found = {}
    for label, pixels in (("float input (blobFromImage)", False), ("uint8 input (in the graph)", True)):
        graph = build_optimised(entry, providers, cache, GraphRecipe(batch=False, pixels=pixels))  # the defaults' detector
        if pixels and not graph_notes(graph).get("pixels"):
            raise SystemExit(f"the uint8 graph was refused: {graph_notes(graph).get('pixels_why')}")
        found[label] = ScrfdDetector(create_session(graph, providers, options=fast_load_options()))
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=40, help="calls per round and graph")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the two graphs taking turns")
    parser.add_argument("--providers", default="cpu", help="EXECUTION_PROVIDERS, e.g. cpu or cuda")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    if not SCRFD.is_file():
        raise SystemExit(f"{SCRFD} is missing: this bench needs the real SCRFD from ../shared")
    from pipeline.sessions import resolve_providers

    providers = resolve_providers(args.providers)
    frame = cv2.imdecode(np.frombuffer(single_face_1080p(), np.uint8), cv2.IMREAD_COLOR)
    with tempfile.TemporaryDirectory(prefix="bench-detect-input-") as cache:
        models = detectors(Path(cache), providers)
        prep = {label: [] for label in models}
        detect = {label: [] for label in models}
        faces = {label: d.detect(frame) for label, d in models.items()}  # warm: first runs allocate
        for _ in range(args.rounds):
            for label, d in models.items():
                prep[label] += _samples(lambda d=d: d.feed(d.letterbox(frame)[0]), args.reps)
                detect[label] += _samples(lambda d=d: d.detect(frame), args.reps)
        rows = []
        for label, d in models.items():
            feed = d.feed(d.letterbox(frame)[0])
            rows.append([label, statistics.median(prep[label]), statistics.median(detect[label]), feed.nbytes / 1e6])
    base, new = faces.values()
    diff = max((max(np.abs(a.bbox - b.bbox).max(), np.abs(a.kps - b.kps).max()) for a, b in zip(base, new, strict=True)),
               default=0.0) if len(base) == len(new) else float("inf")
    diff = float(diff)  # numpy's float32 from the boxes: json cannot write it
    print(f"1920x1080 frame, real SCRFD, {providers[0]}, {args.rounds} x {args.reps} calls per graph (median ms)")
    print(table(["detector graph", "prep ms", "detect ms", "feed MB"], rows))
    print(f"faces: {len(base)} and {len(new)}; largest box/keypoint difference {diff:.4f} px")
    result = {"providers": providers, "rows": rows, "faces": [len(base), len(new)], "max_diff_px": diff}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
