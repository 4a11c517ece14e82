"""Batching on this machine: one swapper run per frame, and micro-batching of concurrent requests.

    python -m bench.batching                 # stand-ins (real SCRFD), in-process, on the CPU
    python -m bench.batching --proxies       # the compute-realistic proxies (slow on a CPU: ~47 GMAC a face)
    python -m bench.batching --providers cuda   # the same on a GPU

1. Frame batching: the 29-face Solvay photograph (`faces=all`) fused with BATCH_MAX=32 (all faces in one
   swapper run) and BATCH_MAX=1 (one run per face, the old loop): median swap-stage and total ms. With
   `enhance=true` too: the enhancer's runs per frame (faces whose regions meet wait for a later run,
   pipeline/models/enhancer.py) and the enhance stage's ms (restoring, pasting and blending).
2. Micro-batching: threads fusing a 1080p one-face frame at concurrency 1, 8 and 32, with BATCH_WAIT_MS=2
   and 0 (off): fusions/s, p50, and how many session runs served how many calls (runs < calls: merged).

In-process (no HTTP, images decoded once) so the table shows the models' part, not the server's.
Timings are whatever this machine gives; the baseline is measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import SHARED, concurrent_rate, single_face_1080p, standin_models, table


def _fuser(models: Path, cache: Path, providers: str, env: dict[str, str]):
    from pipeline import Settings, load_fuser

    return load_fuser(Settings.from_env({"MODEL_PATH": str(models), "CACHE_PATH": str(cache),
                                         "EXECUTION_PROVIDERS": providers, **env}))


def frame_batching(models: Path, cache: Path, providers: str, reps: int, enhance: bool = False) -> list[list]:
    """Solvay, faces=all: swap-stage (or, with `enhance`, enhance-stage) and total ms with all faces in one
    run and with one run per face; with `enhance`, the enhancer's runs per frame too.

    The two fusers take turns, so that load from elsewhere on the machine hits both alike."""
    from pipeline import FuseOptions, StageTimer
    from pipeline.selection import Selection

    configs = {"one run per frame (BATCH_MAX=32)": {"BATCH_MAX": "32"},
               "one run per face (BATCH_MAX=1)": {"BATCH_MAX": "1", "BATCH_WAIT_MS": "0"}}
    fusers = {label: _fuser(models, cache, providers, env) for label, env in configs.items()}
    any_fuser = next(iter(fusers.values()))
    target = any_fuser.decode((SHARED / "images" / "solvay_conference_1927.png").read_bytes())
    source = any_fuser.decode((SHARED / "images" / "obama.jpg").read_bytes())
    options = FuseOptions(selection=Selection("all"), enhance=enhance)
    stage = "enhance" if enhance else "swap"
    runs = {label: _RunCounter.wrap(fuser.enhancer) if enhance else None for label, fuser in fusers.items()}
    swap: dict[str, list[float]] = {label: [] for label in fusers}
    total: dict[str, list[float]] = {label: [] for label in fusers}
    swapped = {}
    for i in range(reps + 1):
        for label, fuser in fusers.items():
            timer = StageTimer()
            start = time.perf_counter()
            result = fuser.fuse(source, target, options, timer, source_key="obama")
            swapped[label] = result.report.faces_swapped
            if i:  # the first round warms up
                total[label].append((time.perf_counter() - start) * 1000)
                swap[label].append(timer.rounded().get(stage, 0.0))
    if enhance:
        return [[label, swapped[label], runs[label].runs // (reps + 1), statistics.median(swap[label]),
                 statistics.median(total[label])] for label in fusers]
    return [[label, swapped[label], statistics.median(swap[label]), statistics.median(total[label])] for label in fusers]


class _RunCounter:
    """Counts the runs of a model's session (the enhancer's runs per frame)."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, 0

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)

    @classmethod
    def wrap(cls, model) -> _RunCounter:
        model.session = cls(model.session)
        return model.session


def micro_batching(models: Path, cache: Path, providers: str, levels: list[int], count: int) -> list[list]:
    """Concurrent fusions of a 1080p frame with BATCH_WAIT_MS=2 and 0, taking turns at each concurrency:
    rate, p50, and session runs per calls of each micro-batched model."""
    from pipeline.batching import MicroBatcher

    fusers = {wait: _fuser(models, cache, providers, {"BATCH_WAIT_MS": wait}) for wait in ("2", "0")}
    any_fuser = fusers["0"]
    target = any_fuser.decode(single_face_1080p())
    source = any_fuser.decode((SHARED / "images" / "obama.jpg").read_bytes())
    rows = []
    for c in levels:
        for wait, fuser in fusers.items():
            batchers = {role: m.session for role, m in fuser.models.models.items() if isinstance(m.session, MicroBatcher)}
            fuser.fuse(source, target, source_key="obama")
            for b in batchers.values():
                b.runs = b.calls = 0
            rate, p50 = concurrent_rate(lambda f=fuser: f.fuse(source, target, source_key="obama"), c, max(count, c))
            merged = ", ".join(f"{role} {b.runs}/{b.calls}" for role, b in batchers.items() if b.calls) or "not wrapped"
            rows.append([f"BATCH_WAIT_MS={wait}", c, rate, p50, merged])
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.batching")
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--proxies", action="store_true", help="compute-realistic proxies instead of the stand-ins")
    parser.add_argument("--reps", type=int, default=5, help="Solvay fusions per row")
    parser.add_argument("--requests", type=int, default=64, help="fusions per concurrency row")
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ff-bench-batching-"))
    if args.proxies:
        from bench.gpu import build_models

        models = build_models(work / "models", standins=False)
    else:
        models = standin_models(work / "models")
    frame = frame_batching(models, work / "cache", args.providers, args.reps)
    print(table(["Solvay, faces=all", "faces", "swap ms (p50)", "fusion ms (p50)"], frame), flush=True)
    enhanced: list[list] = []
    if not args.proxies:  # the proxies have no enhancer
        enhanced = frame_batching(models, work / "cache", args.providers, args.reps, enhance=True)
        print(table(["Solvay, faces=all, enhance=true", "faces", "enhancer runs", "enhance ms (p50)",
                     "fusion ms (p50)"], enhanced), flush=True)
    micro = micro_batching(models, work / "cache", args.providers, [int(c) for c in args.concurrency.split(",")],
                           args.requests)
    print(table(["1080p, one face", "concurrency", "fusions/s", "p50 ms", "session runs/calls"], micro))
    return {"frame": frame, "enhanced": enhanced, "micro": micro}


if __name__ == "__main__":
    main()
