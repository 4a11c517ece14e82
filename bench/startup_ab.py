"""Process start to `/readyz` 200: this checkout against another one, or against itself with other
settings, interleaved in one run.

Why a bench of its own: a change to how the process starts (what is imported when, what runs side by
side) can only be compared with the code or the setting before it, and start times drift with the
machine's load, so the two sides start in turn (ABBA order) on the same models and prepared graphs, and
the medians are compared. The process's own account (`timings_s` of `/readyz`) is shown beside it, in
seconds: `load_start` (when loading began), `cuda_context` (when the GPU's context was made, where it
was made early: pipeline/cuda_context.py), `app_built` (when the app was imported), `model_load`, `warmup`.

    git worktree add /tmp/before <commit>
    python -m bench.startup_ab --baseline /tmp/before --runs 10
    python -m bench.startup_ab --providers cuda --proxies --against CUDA_EARLY_CONTEXT=off --runs 4   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import REPO, free_port, prepare_graphs, standin_models, stop_process, table

KEYS = ("load_start", "cuda_context", "app_built", "model_load", "warmup", "cold_start")


def start_to_ready(checkout: Path, env: dict[str, str]) -> tuple[float, dict]:
    """Seconds from spawning `python -m function.serve` in `checkout` to its first `/readyz` 200, and its timings."""
    port = free_port()
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "function.serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the function in {checkout} exited with {proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                    return time.time() - started, json.load(reply)["timings_s"]
            except OSError:
                time.sleep(0.005)
    finally:
        stop_process(proc)


def settings(spec: str) -> dict[str, str]:
    """`CUDA_EARLY_CONTEXT=off,CPU_THREADS=2` -> {"CUDA_EARLY_CONTEXT": "off", "CPU_THREADS": "2"}."""
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"want KEY=VALUE[,KEY=VALUE...], got {spec!r}")
    return {key.strip(): value.strip() for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup_ab", description=__doc__.split("\n\n")[0])
    side = parser.add_mutually_exclusive_group(required=True)
    side.add_argument("--baseline", type=Path, help="the other checkout (a git worktree)")
    side.add_argument("--against", type=settings, metavar="KEY=VALUE[,...]",
                      help="this checkout with these settings as the other side")
    parser.add_argument("--runs", type=int, default=10, help="starts of each side (default 10)")
    parser.add_argument("--providers", default="", help="EXECUTION_PROVIDERS of both sides (default: auto)")
    parser.add_argument("--proxies", action="store_true",
                        help="models of the real sizes (bench.cold_start's, 740 MB) instead of the small stand-ins")
    args = parser.parse_args()
    # a `timeout` that stops this bench must not leave a server (in its own session) holding a GPU: the
    # signal unwinds through start_to_ready's `finally`, which stops it
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="ff-bench-startup-"))
    try:
        if args.proxies:
            from bench.cold_start import proxy_models

            models = proxy_models()
        else:
            models = standin_models(work / "models")
        env = {**os.environ, "MODEL_PATH": str(models), "CACHE_PATH": str(work / "cache"), "LOG_LEVEL": "warning",
               "DRAIN_SECONDS": "0", **({"EXECUTION_PROVIDERS": args.providers} if args.providers else {})}
        if args.against is not None:
            label = ", ".join(f"{k}={v}" for k, v in args.against.items())
            sides = {"this checkout": (REPO, env), label: (REPO, {**env, **args.against})}
        else:
            sides = {"this checkout": (REPO, env), "baseline": (args.baseline.resolve(), env)}
        for checkout, side_env in sides.values():  # graphs built ahead (a setting may change which)
            prepare_graphs(side_env, checkout)
        results: dict[str, list[tuple[float, dict]]] = {name: [] for name in sides}
        for run in range(args.runs):
            order = list(sides.items())
            for name, (checkout, side_env) in order if run % 2 == 0 else order[::-1]:
                results[name].append(start_to_ready(checkout, side_env))
                print(f"run {run + 1}, {name}: ready in {results[name][-1][0]:.3f} s {results[name][-1][1]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    rows = []
    for name, samples in results.items():
        rows.append([name, statistics.median(s for s, _ in samples),
                     *[statistics.median(t.get(k, float("nan")) for _, t in samples) for k in KEYS]])
    models_said = "proxy models of the real sizes" if args.proxies else "stand-in models"
    print(f"process start -> /readyz 200, {models_said}, median of {args.runs} starts each, interleaved, "
          f"{os.cpu_count()} CPUs{', EXECUTION_PROVIDERS=' + args.providers if args.providers else ''}")
    print(table(["side", "ready (s)", *[f"{k} (s)" for k in KEYS]], rows))
    print(f"ratio this/other: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
