"""Process start to `/readyz` 200 of this checkout against another one, interleaved in one run.

Why a bench of its own: a change to how the process starts (what is imported when, what runs side by
side) can only be compared with the code before it, and start times drift with the machine's load, so
the two checkouts start in turn (ABBA order) on the same stand-in models and prepared graphs, and the
medians are compared. The process's own account (`timings_s` of `/readyz`) is shown beside it:
`load_start` (when loading began), `app_built` (when the app was imported), `model_load`, `warmup`.

    git worktree add /tmp/before <commit>
    python -m bench.startup_ab --baseline /tmp/before --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import REPO, free_port, standin_models, stop_process, table

KEYS = ("load_start", "app_built", "model_load", "warmup", "cold_start")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (a git worktree)")
    parser.add_argument("--runs", type=int, default=10, help="starts of each checkout")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ff-bench-startup-"))
    env = {**os.environ, "MODEL_PATH": str(standin_models(work / "models")), "CACHE_PATH": str(work / "cache"),
           "LOG_LEVEL": "warning"}
    checkouts = {"this checkout": REPO, "baseline": args.baseline.resolve()}
    for checkout in checkouts.values():  # graphs built ahead, as the init container does
        subprocess.run([sys.executable, "-m", "warmup", "prepare"], cwd=checkout, env=env, check=True, capture_output=True)
    results: dict[str, list[tuple[float, dict]]] = {name: [] for name in checkouts}
    for run in range(args.runs):
        order = list(checkouts.items())
        for name, checkout in order if run % 2 == 0 else order[::-1]:
            results[name].append(start_to_ready(checkout, env))
    rows = []
    for name, samples in results.items():
        rows.append([name, statistics.median(s for s, _ in samples),
                     *[statistics.median(t.get(k, float("nan")) for _, t in samples) for k in KEYS]])
    print(f"process start -> /readyz 200, stand-in models, median of {args.runs} starts each, interleaved, "
          f"{os.cpu_count()} CPUs")
    print(table(["checkout", "ready (s)", *[f"{k} (s)" for k in KEYS]], rows))
    print(f"ratio this/baseline: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
