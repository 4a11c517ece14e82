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
(nvidia-smi) during each load, and the same run with batching off as the baseline (`--configs`:
`batched`, the defaults, then `unbatched`: BATCH_WAIT_MS=0 and BATCH_MAX=1, one face per swapper run and
graphs as published), with the ratio of the two. The model table says, per config, each model's ms at
batch 1 and per row of a batch of 8 (where the prepared graph has a free batch axis) and whether its
graph was served in fp16 (MODEL_FP16, with the measured error when refused).
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


CONFIGS = {
    # batching on: the defaults (BATCH_WAIT_MS 2 on a GPU, 0 on the CPU; all faces of a frame in one run)
    "batched": {},
    # the baseline: no micro-batching, no batch axis, one face per swapper run
    "unbatched": {"BATCH_WAIT_MS": "0", "BATCH_MAX": "1"},
}


def _settings(models: Path, cache: Path, providers: str, config: str):
    from pipeline import Settings

    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(cache), "EXECUTION_PROVIDERS": providers, **CONFIGS[config]}
    return Settings.from_env(env)


def _median_ms(session, rows: int, runs: int) -> float:
    """Median ms of `runs` runs of `session` on random inputs of `rows` rows, after one warm-up run."""
    feeds = {}
    for inp in session.get_inputs():
        shape = [rows] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
        feeds[inp.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def per_model_ms(models: Path, cache: Path, providers: str, runs: int, config: str = "batched",
                 batch: int = 8) -> tuple[list[list], dict[str, str]]:
    """Median ms of one run of each model in this process (after a warm-up run), at batch 1 and, where the
    prepared graph has a free batch axis, per row of a batch of `batch`; what the graph was built to."""
    from pipeline import load_models
    from pipeline.artefacts import graph_notes, optimised_path
    from pipeline.loader import graph_recipe

    settings = _settings(models, cache, providers, config)
    bundle = load_models(settings)
    recipe = graph_recipe(settings, bundle.providers)
    rows = []
    for role, model in bundle.models.items():
        session = getattr(model.session, "session", model.session)  # the runtime's, not the micro-batcher
        notes = graph_notes(optimised_path(bundle.model_set.models[role], bundle.providers, cache, recipe))

        free = not isinstance(session.get_inputs()[0].shape[0], int)
        fp16 = notes.get("fp16_error")
        rows.append([config, role, bundle.active[role][0], _median_ms(session, 1, runs), _median_ms(session, batch, runs) / batch if free else float("nan"),
                     "off" if not recipe.fp16 else "yes" if notes.get("fp16") else
                     ("refused" if fp16 is None else f"refused ({fp16:.3g})")])
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


def gpu_memory_mib(pids: set[str]) -> list[list]:
    """GPU memory of each serving process (nvidia-smi's compute apps; empty without a GPU)."""
    return [[pid, float(used)] for pid, used in nvidia_smi("pid,used_memory", "compute-apps") if pid in pids]


def serve_config(config: str, models: Path, cache: Path, providers: str, images: dict, source: bytes,
                 levels: list[int], requests_per_row: int, workers: int) -> dict:
    """Start the function with `config`'s settings and measure cold start, stages, throughput, memory."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(cache), "EXECUTION_PROVIDERS": providers,
           "MAX_INFLIGHT": str(max(levels)), "K_REVISION": "bench-gpu", "DRAIN_SECONDS": "0",
           "WORKERS": str(workers), **CONFIGS[config]}
    started = time.perf_counter()
    proc = spawn(function_command(port), env)
    out: dict = {"config": config, "rows": [], "stages": [], "memory": []}
    try:
        while time.perf_counter() - started < 300:
            if proc.poll() is not None:
                raise SystemExit(f"the function exited with {proc.returncode}")
            try:
                r = requests.get(url + "readyz", timeout=2)
                if r.status_code == 200:
                    out["ready_s"] = time.perf_counter() - started
                    break
                if r.json().get("status") == "failed":
                    raise SystemExit(f"not ready: {r.json().get('reason')}")
            except requests.RequestException:
                pass
            time.sleep(0.02)
        first = requests.post(url, files={"source": source, "target": images["1080p"][0]}, timeout=300)
        out["first_s"] = time.perf_counter() - started
        assert first.status_code == 200, first.text
        print(f"[{config}] cold start: ready {out['ready_s']:.2f} s, first answer {out['first_s']:.2f} s", flush=True)
        for name, (target, data) in images.items():
            count = requests_per_row if name != "solvay" else max(3, requests_per_row // 4)
            stages = stage_ms(url, {"source": source, "target": target}, data, max(3, count // 20))
            out["stages"].append([config, name, *(f"{k} {v:.1f}" for k, v in stages.items())])
            for c in levels:
                with UtilSampler() as util:
                    rps, p50, p99, errors = drive(url, lambda i, t=target: {"source": source, "target": t}, c, count, data)
                gpu_util = statistics.mean(util.samples) if util.samples else float("nan")
                out["rows"].append([name, c, rps, p50, p99, errors, gpu_util, config])
                print(table(ROW_HEADERS, [out["rows"][-1]]), flush=True)
        out["memory"] = [[config, *row] for row in gpu_memory_mib({str(p) for p in worker_pids(proc.pid)})]
    finally:
        stop_process(proc)
    return out


ROW_HEADERS = ["image", "concurrency", "req/s", "p50 ms", "p99 ms", "errors", "GPU util %", "config"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU with the small stand-ins")
    parser.add_argument("--requests", type=int, default=200, help="requests per row (a quarter for solvay)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--images", default="1080p,4k,solvay")
    parser.add_argument("--model-runs", type=int, default=50)
    parser.add_argument("--configs", default="batched,unbatched", help=f"of {', '.join(CONFIGS)}; the first is the "
                        "one measured, the others baselines in the same run")
    parser.add_argument("--workers", type=int, default=1, help="WORKERS: serving processes sharing the GPU")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    configs = args.configs.split(",")
    providers = "cpu" if args.cpu else "cuda"
    work = Path(tempfile.mkdtemp(prefix="ff-bench-gpu-"))
    t = time.perf_counter()
    models = build_models(work / "models", args.cpu)
    print(f"model set built in {time.perf_counter() - t:.1f} s ({'stand-ins' if args.cpu else 'compute-realistic proxies'})",
          flush=True)
    model_rows: list[list] = []
    active: dict[str, str] = {}
    for config in configs:  # also prepares each config's graphs, so cold starts below are prepared starts
        t = time.perf_counter()
        rows, active = per_model_ms(models, work / "cache", providers, args.model_runs, config)
        model_rows += rows
        print(f"[{config}] prepared and measured in {time.perf_counter() - t:.1f} s", flush=True)
    model_headers = ["config", "model", "provider", "ms per run", "ms per row of 8", "fp16 (error)"]
    print(table(model_headers, model_rows), flush=True)

    source = (SHARED / "images" / "obama.jpg").read_bytes()
    every = {"1080p": (frame_with_face(1920, 1080), {}), "4k": (frame_with_face(3840, 2160), {}),
             "solvay": ((SHARED / "images" / "solvay_conference_1927.png").read_bytes(), {"faces": "all"})}
    images = {name: every[name] for name in args.images.split(",")}
    images.setdefault("1080p", every["1080p"])  # the first answer of the cold start
    runs = [serve_config(config, models, work / "cache", providers, images, source, levels, args.requests, args.workers)
            for config in configs]
    print()
    print(f"function on {'CPU' if args.cpu else 'GPU'} ({providers}; {active}); {args.requests} requests per row "
          f"(solvay: a quarter); WORKERS={args.workers}; {os.cpu_count()} CPUs")
    for run in runs:
        print(f"[{run['config']}] process start -> /readyz 200: {run['ready_s']:.2f} s; -> first answer: {run['first_s']:.2f} s")
    print(table(model_headers, model_rows))
    rows = [row for run in runs for row in run["rows"]]
    print(table(ROW_HEADERS, rows))
    if len(runs) > 1:
        base = {(r[0], r[1]): r for r in runs[1]["rows"]}
        gains = [[r[0], r[1], r[2] / base[(r[0], r[1])][2], base[(r[0], r[1])][3] - r[3]]
                 for r in runs[0]["rows"] if (r[0], r[1]) in base]
        print(table(["image", "concurrency", f"req/s {runs[0]['config']} / {runs[1]['config']}", "p50 ms saved"], gains))
    print("server stages, median ms at concurrency 1:")
    for run in runs:
        for row in run["stages"]:
            print("  " + " | ".join(row))
    memory = [row for run in runs for row in run["memory"]]
    if memory:
        print(table(["config", "worker pid", "GPU memory MiB"], memory))
    main_run = runs[0]
    return {"ready_s": main_run["ready_s"], "first_s": main_run["first_s"], "models": model_rows,
            "rows": main_run["rows"], "runs": runs, "memory": memory}


if __name__ == "__main__":
    main()
