"""GPU bench: cold start, per-model and per-stage time, and throughput of the function on one GPU.

    python -m bench.gpu                      # on a GPU machine: compute-realistic stand-ins, EXECUTION_PROVIDERS=cuda
    python -m bench.gpu --cpu --requests 4   # the same run on the CPU with the small stand-ins (CI runs this)

Models: on a GPU, compute-realistic stand-ins of the real sizes (the inswapper proxy does ~47 GMAC,
the recognizer is arcface-sized, the detector is the real SCRFD), built with
`../shared/gpu/build_proxies.py` (or `.gpu/build_proxies.py` where the checkout carries it); on the CPU,
the small stand-ins of `devtools`. Both are written as a model set with this project's manifest.

The run prints, in one go: process start to `/readyz` 200 and to the first answer; each model's ms per
run in-process; then, over HTTP with the server as production starts it, requests/s and p50/p99 at
each concurrency for a 1920x1080 and a 3840x2160 frame with one face and the 29-face Solvay photograph
(`faces=all`), the server's stage times (from Server-Timing), GPU memory per worker and GPU utilisation
(nvidia-smi) at the highest concurrency. Batching is not built yet, so there is no batching-off row.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import requests

from bench.common import (
    REPO,
    SCRFD,
    SHARED,
    free_port,
    function_command,
    spawn,
    stop_process,
    table,
    worker_pids,
)
from bench.serve import drive


def _proxy_builder():
    for folder in (REPO / ".gpu", SHARED / "gpu"):
        path = folder / "build_proxies.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("build_proxies", path)
            module = importlib.util.module_from_spec(spec)
            assert spec.loader is not None
            spec.loader.exec_module(module)
            return module
    raise SystemExit("build_proxies.py not found in .gpu/ or ../shared/gpu/")


def build_models(root: Path, cpu: bool) -> Path:
    """A model set under `root` (with `current`): small stand-ins on the CPU, proxies of real cost on a GPU."""
    import onnx

    from pipeline import atomic_symlink, manifest_document, sha256_file, write_manifest_file

    if cpu:
        from devtools.standins import write_test_models

        write_test_models(root, detector=SCRFD, enhancer=False)
        return root
    proxies = _proxy_builder()
    target = root / "proxy"
    target.mkdir(parents=True)
    (target / "det.onnx").write_bytes(SCRFD.read_bytes())
    onnx.save(proxies.build_inswapper(), str(target / "swap.onnx"))
    onnx.save(proxies.build_arcface(), str(target / "rec.onnx"))
    entries = {"detector": {"file": "det.onnx", "kind": "scrfd", "input_size": [640, 640]},
               "recognizer": {"file": "rec.onnx", "kind": "arcface", "input_size": [112, 112]},
               "swapper": {"file": "swap.onnx", "kind": "inswapper", "input_size": [128, 128]}}
    for spec in entries.values():
        spec.update(sha256=sha256_file(target / spec["file"]), size=(target / spec["file"]).stat().st_size)
    write_manifest_file(target, manifest_document("compute-realistic proxies (NOT real swaps)", "proxy", entries))
    atomic_symlink(root / "current", "proxy")
    return root


def per_model_ms(models: Path, cache: Path, providers: str, runs: int) -> tuple[list[list], dict[str, str]]:
    """Median ms of one run of each model, in this process, after one warm-up run."""
    from pipeline import Settings, load_models

    bundle = load_models(Settings(model_path=models, cache_path=cache, execution_providers=providers))
    rows = []
    for role, model in bundle.models.items():
        session = model.session
        feeds = {}
        for inp in session.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            feeds[inp.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
        session.run(None, feeds)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - start) * 1000)
        rows.append([role, bundle.active[role][0], statistics.median(times)])
    return rows, {role: names[0] for role, names in bundle.active.items()}


def frame_with_face(width: int, height: int) -> bytes:
    face = cv2.imread(str(SHARED / "images" / "obama.jpg"))
    scale = (height * 0.6) / face.shape[0]
    face = cv2.resize(face, None, fx=scale, fy=scale)
    frame = np.full((height, width, 3), 120, np.uint8)
    x, y = (width - face.shape[1]) // 2, (height - face.shape[0]) // 2
    frame[y:y + face.shape[0], x:x + face.shape[1]] = face
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def nvidia_smi(query: str, target: str) -> list[list[str]]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-{target}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]


class UtilSampler:
    """GPU utilisation sampled every 0.2 s while a load runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for row in nvidia_smi("utilization.gpu", "gpu")[:1]:
                self.samples.append(float(row[0]))

    def __enter__(self) -> UtilSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def stage_ms(url: str, files: dict, data: dict, count: int) -> dict[str, float]:
    """Median server stage times from Server-Timing over `count` sequential requests."""
    stages: dict[str, list[float]] = {}
    for _ in range(count):
        r = requests.post(url, files=files, data=data, timeout=300)
        for part in r.headers.get("Server-Timing", "").split(","):
            name, _, dur = part.strip().partition(";dur=")
            if dur:
                stages.setdefault(name, []).append(float(dur))
    return {name: statistics.median(v) for name, v in stages.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU with the small stand-ins")
    parser.add_argument("--requests", type=int, default=200, help="requests per row")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--images", default="1080p,4k,solvay")
    parser.add_argument("--model-runs", type=int, default=50)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    providers = "cpu" if args.cpu else "cuda"
    work = Path(tempfile.mkdtemp(prefix="ff-bench-gpu-"))
    t = time.perf_counter()
    models = build_models(work / "models", args.cpu)
    print(f"model set built in {time.perf_counter() - t:.1f} s ({'stand-ins' if args.cpu else 'compute-realistic proxies'})",
          flush=True)
    model_rows, active = per_model_ms(models, work / "cache", providers, args.model_runs)  # also prepares the cache
    print(table(["model", "provider", "ms per run"], model_rows), flush=True)

    source = (SHARED / "images" / "obama.jpg").read_bytes()
    images = {"1080p": (frame_with_face(1920, 1080), {}), "4k": (frame_with_face(3840, 2160), {}),
              "solvay": ((SHARED / "images" / "solvay_conference_1927.png").read_bytes(), {"faces": "all"})}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(work / "cache"), "EXECUTION_PROVIDERS": providers,
           "MAX_INFLIGHT": str(max(levels)), "K_REVISION": "bench-gpu", "DRAIN_SECONDS": "0"}
    started = time.perf_counter()
    proc = spawn(function_command(port), env)
    ready_s = first_s = None
    rows, stage_rows, memory = [], [], []
    try:
        while time.perf_counter() - started < 300:
            if proc.poll() is not None:
                raise SystemExit(f"the function exited with {proc.returncode}")
            try:
                r = requests.get(url + "readyz", timeout=2)
                if r.status_code == 200:
                    ready_s = time.perf_counter() - started
                    break
                if r.json().get("status") == "failed":
                    raise SystemExit(f"not ready: {r.json().get('reason')}")
            except requests.RequestException:
                pass
            time.sleep(0.02)
        first = requests.post(url, files={"source": source, "target": images["1080p"][0]}, timeout=300)
        first_s = time.perf_counter() - started
        assert first.status_code == 200, first.text
        print(f"cold start: ready {ready_s:.2f} s, first answer {first_s:.2f} s; providers {active}", flush=True)
        for name in args.images.split(","):
            target, data = images[name]
            stage_rows.append([name, *(f"{k} {v:.1f}" for k, v in stage_ms(url, {"source": source, "target": target}, data,
                                                                             max(3, args.requests // 20)).items())])
            for c in levels:
                with UtilSampler() as util:
                    rps, p50, p99, errors = drive(url, lambda i, t=target: {"source": source, "target": t}, c, args.requests, data)
                gpu_util = statistics.mean(util.samples) if util.samples else float("nan")
                rows.append([name, c, rps, p50, p99, errors, gpu_util])
                print(table(["image", "concurrency", "req/s", "p50 ms", "p99 ms", "errors", "GPU util %"], [rows[-1]]),
                      flush=True)
        pids = {str(p) for p in worker_pids(proc.pid)}
        for pid, used in nvidia_smi("pid,used_memory", "compute-apps"):
            if pid in pids:
                memory.append([pid, float(used)])
    finally:
        stop_process(proc)
    print()
    print(f"function on {'CPU' if args.cpu else 'GPU'} ({providers}); {args.requests} requests per row; "
          f"{os.cpu_count()} CPUs")
    print(f"process start -> /readyz 200: {ready_s:.2f} s; -> first answer: {first_s:.2f} s")
    print(table(["model", "provider", "ms per run"], model_rows))
    print(table(["image", "concurrency", "req/s", "p50 ms", "p99 ms", "errors", "GPU util %"], rows))
    print("server stages, median ms at concurrency 1:")
    for row in stage_rows:
        print("  " + " | ".join(row))
    if memory:
        print(table(["worker pid", "GPU memory MiB"], memory))
    return {"ready_s": ready_s, "first_s": first_s, "models": model_rows, "rows": rows, "memory": memory}


if __name__ == "__main__":
    main()
