"""Load: direct fusions and storage events at 2x and 5x what MAX_INFLIGHT serves, over loopback.

Every request must get an answer (a result, or 429/503 with Retry-After; never a hang or a reset),
the worker's memory must stay flat, and once the load stops the next request must succeed at normal
latency. Bounded in time (`--seconds` per level) and in count (`--max-requests`).
Run: python -m bench.load [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from bench.common import (
    SHARED,
    free_port,
    function_command,
    memory,
    single_face_1080p,
    standin_models,
    start_process,
    stop_process,
    table,
    worker_pids,
)
from bench.replay import make_inputs, notification


def run(seconds: float = 60, max_requests: int = 100_000, inflight: int = 2, quiet: bool = False,
        factors: tuple[int, ...] = (2, 5)) -> dict:
    root = Path(tempfile.mkdtemp(prefix="ff-load-"))
    for sub in ("in", "faces"):
        (root / sub).mkdir()
    (root / "faces" / "src.jpg").write_bytes((SHARED / "images" / "obama.jpg").read_bytes())
    etags = make_inputs(root / "in", 40)
    models = standin_models(enhancer=False)
    port = free_port()
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(root / "cache"), "MAX_INFLIGHT": str(inflight), "PORT": str(port),
           "SOURCE_FACE_URI": f"file://{root}/faces/src.jpg", "INPUT_URI_TEMPLATE": f"file://{root}/{{bucket}}/{{name}}",
           "OUTPUT_URI": f"file://{root}/out/{{stem}}.fused.jpg", "ALLOWED_URI_PREFIXES": f"file://{root}/"}
    proc = start_process(function_command(port), env, f"http://127.0.0.1:{port}/readyz")
    url = f"http://127.0.0.1:{port}/"
    target = single_face_1080p()
    source = (SHARED / "images" / "obama.jpg").read_bytes()
    keys = list(etags)

    def one(i: int, session: requests.Session) -> tuple[str, float]:
        start = time.perf_counter()
        try:
            if i % 2:
                r = session.post(url, files={"source": source, "target": target}, timeout=60)
            else:
                key = keys[i % len(keys)]
                r = session.post(url, json=notification(key, etags[key]), timeout=60)
            status = str(r.status_code)
            if r.status_code in (429, 503) and not r.headers.get("Retry-After"):
                status += "-no-retry-after"
        except requests.Timeout:
            status = "hang"
        except requests.ConnectionError:
            status = "reset"
        return status, (time.perf_counter() - start) * 1000

    def latency_now(n: int = 5) -> float:
        s = requests.Session()
        return statistics.median(one(1, s)[1] for _ in range(n))

    baseline_ms = latency_now()
    wpid = worker_pids(proc.pid)[0]

    def level(clients: int) -> dict:
        counts: dict[str, int] = {}
        rss: list[tuple[float, float]] = []
        stop = threading.Event()
        lock = threading.Lock()
        sent = [0]

        def sampler() -> None:
            t0 = time.time()
            while not stop.wait(0.5):
                rss.append((time.time() - t0, memory(wpid)["rss"]))

        def client(_: int) -> None:
            session = requests.Session()
            end = time.time() + seconds
            while time.time() < end:
                with lock:
                    if sent[0] >= max_requests:
                        return
                    sent[0] += 1
                    i = sent[0]
                status, _ms = one(i, session)
                with lock:
                    counts[status] = counts.get(status, 0) + 1
                if status in ("429", "503"):
                    time.sleep(0.05)  # a polite client backs off briefly, as Eventing would

        sampler_thread = threading.Thread(target=sampler, daemon=True)
        sampler_thread.start()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        stop.set()
        sampler_thread.join()
        settled = [(t, m) for t, m in rss if t >= min(60.0, seconds / 2)] or rss
        # growth as a trend (least-squares slope), not last-minus-first: allocator arenas make RSS wobble
        slope = float(np.polyfit([t for t, _ in settled], [m for _, m in settled], 1)[0]) * 60 if len(settled) > 2 else 0.0
        return {"clients": clients, "sent": sent[0], "answered": sum(v for k, v in counts.items() if k.isdigit()),
                "200": counts.get("200", 0), "429": counts.get("429", 0), "503": counts.get("503", 0),
                "other": sum(v for k, v in counts.items() if k not in ("200", "429", "503")),
                "max_rss_mb": round(max((m for _, m in rss), default=memory(wpid)["rss"]), 1),
                "rss_range_mb": f"{min(m for _, m in settled):.0f}-{max(m for _, m in settled):.0f}" if settled else "",
                "rss_trend_mb_per_min": round(slope, 1),
                "after_ms": round(latency_now(), 1), "statuses": counts}

    rows, summary = [], {"baseline_ms": round(baseline_ms, 1)}
    try:
        for factor in factors:
            row = level(factor * inflight)
            summary[f"{factor}x"] = row
            rows.append([v for k, v in row.items() if k != "statuses"])
    finally:
        stop_process(proc)
    if not quiet:
        print(f"load over loopback, MAX_INFLIGHT={inflight}, {seconds:g} s per level, half direct 1080p fusions, "
              f"half storage events; idle latency before: {baseline_ms:.0f} ms")
        print(table(["clients", "sent", "answered", "200", "429", "503", "other", "max RSS MB",
                     "RSS range after warm-up", "RSS trend MB/min", "latency after (ms)"], rows))
        print(json.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--factors", default="2,5", help="load levels as multiples of MAX_INFLIGHT")
    args = parser.parse_args()
    factors = tuple(int(f) for f in args.factors.split(","))
    summary = run(args.seconds, args.max_requests, factors=factors)
    bad = any(summary[f"{f}x"]["other"] for f in factors)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
