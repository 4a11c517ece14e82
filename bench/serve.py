"""Throughput and latency over HTTP: our function against the seed article's FastAPI endpoint.

Both serve a 1920x1080 JPEG with one face and the same stand-in models (real SCRFD detector) on this
machine, one process each, at concurrency 1, 2 and 4. "ours" reuses the source face's embedding across
requests with the same source bytes (a feature: storage events share SOURCE_FACE_URI); "ours, new
source" makes every source unique to show the uncached path.
Run: python -m bench.serve [--requests 24]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import (
    SHARED,
    free_port,
    function_command,
    single_face_1080p,
    standin_models,
    start_process,
    stop_process,
    table,
)


def drive(url: str, files_for, concurrency: int, count: int, data: dict | None = None) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) for `count` multipart requests (form fields `data`) at `concurrency`."""
    session = requests.Session()
    latencies: list[float] = []
    errors = 0

    def one(i: int) -> None:
        nonlocal errors
        start = time.perf_counter()
        r = session.post(url, files=files_for(i), data=data, timeout=300)
        latencies.append((time.perf_counter() - start) * 1000)
        if r.status_code != 200:
            errors += 1

    for i in range(concurrency):  # warm each connection and thread
        one(-1 - i)
    latencies.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return count / wall, statistics.median(latencies), q[98], errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", default="1,2,4")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    root = standin_models(enhancer=False)
    fa_root = Path(tempfile.mkdtemp(prefix="ff-bench-fa-"))
    (fa_root / "models" / "standin").mkdir(parents=True)
    for name in ("det.onnx", "rec.onnx"):
        shutil.copy(root / "test" / name, fa_root / "models" / "standin" / name)
    target = single_face_1080p()
    source = (SHARED / "images" / "obama.jpg").read_bytes()

    ours_port, base_port = free_port(), free_port()
    ours = start_process(function_command(ours_port),
                         {"MODEL_PATH": str(root), "MAX_INFLIGHT": str(max(levels)), "K_REVISION": "bench"},
                         f"http://127.0.0.1:{ours_port}/readyz")
    try:  # the baseline needs the `bench` extra (fastapi); without it, ours must not be left running
        base = start_process([sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", "127.0.0.1",
                              "--port", str(base_port), "--log-level", "warning"],
                             {"BASELINE_ROOT": str(fa_root), "BASELINE_SWAPPER": str(root / "test" / "swap.onnx")},
                             f"http://127.0.0.1:{base_port}/health")
    except BaseException:
        stop_process(ours)
        raise
    rows = []
    try:
        for c in levels:
            same = lambda i: {"source": source, "target": target}  # noqa: E731
            fresh = lambda i: {"source": source + os.urandom(8) + str(i).encode(), "target": target}  # noqa: E731
            b = drive(f"http://127.0.0.1:{base_port}/fuse", same, c, args.requests)
            o = drive(f"http://127.0.0.1:{ours_port}/", same, c, args.requests)
            n = drive(f"http://127.0.0.1:{ours_port}/", fresh, c, args.requests)
            rows.append([c, "baseline (FastAPI + insightface)", *b, 1.0])
            rows.append([c, "ours", *o, o[0] / b[0]])
            rows.append([c, "ours, new source each request", *n, n[0] / b[0]])
    finally:
        stop_process(ours)
        stop_process(base)
    print(f"1920x1080 JPEG, one face, {args.requests} requests per row, stand-in models, {os.cpu_count()} CPUs")
    print(table(["concurrency", "server", "req/s", "p50 ms", "p99 ms", "errors", "x baseline"], rows))


if __name__ == "__main__":
    main()
