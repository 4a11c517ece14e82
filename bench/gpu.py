"""GPU bench: cold start, per-model and per-stage time, and throughput of the function on one GPU.

    python -m bench.gpu                      # on a GPU machine: compute-realistic stand-ins, EXECUTION_PROVIDERS=cuda
    python -m bench.gpu --cpu --requests 4   # the same run on the CPU with the small stand-ins (CI runs this)
    python -m bench.gpu --configs defaults,unbatched,defaults@4,merged   # @N: with WORKERS=N processes

Models: on a GPU, compute-realistic stand-ins of the real sizes (the inswapper proxy does ~47 GMAC,
the recognizer is arcface-sized, the detector is the real SCRFD), built with
`../shared/gpu/build_proxies.py` (or `.gpu/build_proxies.py` where the checkout carries it); on the CPU,
the small stand-ins of `devtools` (`--proxies` takes the proxies there too, to try the GPU run's models
on a CPU). Both are written as a model set with this project's manifest.

The load comes from several client processes (each with its own connections, one per thread), so the
client's own interpreter is not what caps requests/s at high concurrency.

The run prints, in one go: process start to `/readyz` 200 and to the first answer; each model's ms per
run in-process; then, over HTTP with the server as production starts it, requests/s and p50/p99 at
each concurrency for a 1920x1080 and a 3840x2160 frame with one face and the 29-face Solvay photograph
(`faces=all`), the server's stage times (from Server-Timing), GPU memory per worker and GPU utilisation
(nvidia-smi) during each load, the serving processes' CPU ms per request and the whole machine's CPU use
(clients included) during each load, and the same run with batching off as the baseline (`--configs`:
`defaults`, then `unbatched`: BATCH_MAX=1, one face per swapper run and graphs as published; `merged`
adds micro-batching across requests, BATCH_WAIT_MS=2), with the ratio of the first to each other. The model table says, per config, each model's ms at
batch 1 and per row of a batch of 8 (where the prepared graph has a free batch axis) and whether its
graph was served in fp16 (MODEL_FP16, with the measured error when refused); its `fp32` rows
(`--model-only`, MODEL_FP16=off) are the fp16 baseline, measured but not served.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import requests

from bench.common import (
    REPO,
    SCRFD,
    SHARED,
    busy_percent,
    cpu_seconds,
    frame_with_face,
    free_port,
    function_command,
    machine_cpu,
    median_ms,
    spawn,
    stop_process,
    table,
    worker_pids,
)


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


def build_models(root: Path, standins: bool) -> Path:
    """A model set under `root` (with `current`): the small stand-ins, or proxies of real cost."""
    import onnx

    from pipeline import atomic_symlink, manifest_document, sha256_file, write_manifest_file

    if standins:
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


CONFIGS: dict[str, dict[str, str]] = {
    # the defaults: a free batch axis, all faces of a frame in one run per model, no merging across requests
    "defaults": {},
    # the baseline: no batch axis, one face per swapper run
    "unbatched": {"BATCH_WAIT_MS": "0", "BATCH_MAX": "1"},
    # the defaults plus micro-batching: concurrent requests' runs merged, waiting at most 2 ms
    "merged": {"BATCH_WAIT_MS": "2"},
    # the defaults with fp32 graphs only (MODEL_FP16=off): the model table's baseline for fp16
    "fp32": {"MODEL_FP16": "off"},
    # the defaults with JPEG decode and encode on the GPU (nvImageCodec) instead of OpenCV
    "nvimgcodec": {"IMAGE_CODEC": "nvimgcodec"},
    # the defaults with every model's one-frame, one-face runs replayed as CUDA graphs (pipeline/cuda_graph.py)
    "graphs": {"CUDA_GRAPHS": "all"},
    # the defaults with each worker's native pools (OpenCV's, the sessions') sized to its share of the CPUs
    "cpushare": {"CPU_THREADS": "share"},
}


def parse_config(spec: str) -> tuple[str, int]:
    """`defaults@4` -> ("defaults", 4): a config of CONFIGS (or several joined by `+`, such as
    `graphs+nvimgcodec`) served by that many worker processes."""
    name, _, workers = spec.partition("@")
    unknown = [part for part in name.split("+") if part not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config {unknown[0]!r}; use one of {', '.join(CONFIGS)} (joined by +, with @N for "
                         "N workers)")
    return name, int(workers or 1)


def config_env(name: str) -> dict[str, str]:
    """The settings of a config name from parse_config: those of each of its `+`-joined parts."""
    return {key: value for part in name.split("+") for key, value in CONFIGS[part].items()}


# settings that change how a config serves, not the graphs it loads or how a model runs on its own
SERVING_ONLY = frozenset({"CUDA_GRAPHS", "IMAGE_CODEC", "CPU_THREADS"})


def graphs_of(name: str) -> str:
    """The config whose prepared graphs and model-table rows `name` shares: the defaults' for a config
    that only changes how it serves (graphs, codec, threads), else its own."""
    return "defaults" if set(config_env(name)) <= SERVING_ONLY else name


def _settings(models: Path, cache: Path, providers: str, config: str):
    from pipeline import Settings

    # the server's environment (it inherits ours), so the graphs prepared here are the ones it loads
    env = {**os.environ, "MODEL_PATH": str(models), "CACHE_PATH": str(cache), "EXECUTION_PROVIDERS": providers,
           **config_env(parse_config(config)[0]),
           "CUDA_GRAPHS": "off"}  # the model table runs sessions directly: a graph session would capture graph 0
    return Settings.from_env(env)


def _median_ms(session, rows: int, runs: int) -> float:
    """Median ms of `runs` runs of `session` on random inputs of `rows` rows (uint8 for the detector's
    pixel input), after one warm-up run."""
    from pipeline.batch_axis import probe_feeds

    feeds = probe_feeds(session.get_inputs(), rows)
    return median_ms(lambda: session.run(None, feeds), runs)


def per_model_ms(models: Path, cache: Path, providers: str, runs: int, config: str = "defaults",
                 batch: int = 8) -> tuple[list[list], dict[str, str]]:
    """Median ms of one run of each model in this process (after a warm-up run), at batch 1 and, where the
    prepared graph has a free batch axis, per row of a batch of `batch`; what the graph was built to."""
    from pipeline import load_models
    from pipeline.artefacts import graph_notes, optimised_path
    from pipeline.loader import role_recipes

    settings = _settings(models, cache, providers, config)
    bundle = load_models(settings)
    recipes = role_recipes(bundle.model_set, settings, bundle.providers)  # the detector's: no axis nor fp16 by default
    rows = []
    for role, model in bundle.models.items():
        session = getattr(model.session, "session", model.session)  # the runtime's, not the micro-batcher
        entry = bundle.model_set.models[role]
        own = recipes[role]
        notes = graph_notes(optimised_path(entry, bundle.providers, cache, own))

        free = not isinstance(session.get_inputs()[0].shape[0], int)
        fp16 = notes.get("fp16_error")
        rows.append([config, role, bundle.active[role][0], _median_ms(session, 1, runs), _median_ms(session, batch, runs) / batch if free else float("nan"),
                     "off" if not own.fp16 else "yes" if notes.get("fp16") else
                     ("refused" if fp16 is None else f"refused ({fp16:.3g})"),
                     "" if free or not own.batch else notes.get("batch_why", "?")[:90]])
    return rows, {role: names[0] for role, names in bundle.active.items()}


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


def server_timing(header: str) -> dict[str, float]:
    """`decode;dur=6.8, detect;dur=7.1` -> {"decode": 6.8, "detect": 7.1}."""
    stages = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            stages[name] = float(dur)
    return stages


def gpu_memory_mib(pids: set[str]) -> list[list]:
    """GPU memory of each serving process (nvidia-smi's compute apps; empty without a GPU)."""
    return [[pid, float(used)] for pid, used in nvidia_smi("pid,used_memory", "compute-apps") if pid in pids]


class ClientRun(NamedTuple):
    """What one load process measured (it crosses the process boundary, so a plain picklable record)."""

    start: float  # wall clock (time.time) when its threads began, and ended
    end: float
    latencies: list[float]  # ms
    errors: int
    stages: list[dict[str, float]]  # the server's stage times of each answer, with `outside`
    cpu_s: float  # the process's own CPU seconds during the load


def _client_process(url: str, files: dict, data: dict, threads: int, count: int, barrier, results) -> None:
    """One load process: `threads` threads with a connection each send `count` requests between them,
    starting together with the other client processes; puts its ClientRun (`outside`: the latency no
    stage holds). The form is encoded once (bench/form_client.py): the clients share the CPUs with the
    function, so they should take as little of them as a client can."""
    from bench.form_client import FormPoster, multipart_form

    body, content_type = multipart_form(files, data)
    posters = [FormPoster(url, body, content_type) for _ in range(threads)]
    for poster in posters:  # open and warm each connection
        poster.post()
    left = iter(range(count))
    lock = threading.Lock()
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    errors = 0

    def work(poster: FormPoster) -> None:
        nonlocal errors
        while True:
            with lock:
                if next(left, None) is None:
                    return
            t = time.perf_counter()
            answer = poster.post()
            ms = (time.perf_counter() - t) * 1000
            timings = server_timing(answer.headers.get("Server-Timing", ""))
            if timings:  # what no stage holds: sending and receiving, parsing, the front door, queueing
                timings["outside"] = ms - sum(timings.values())
            with lock:
                latencies.append(ms)
                errors += answer.status != 200
                stages.append(timings)
    barrier.wait()
    start, cpu = time.time(), time.process_time()
    pool = [threading.Thread(target=work, args=(p,)) for p in posters]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put(ClientRun(start, time.time(), latencies, errors, stages, time.process_time() - cpu))


def load(url: str, files: dict, data: dict, concurrency: int, count: int,
         procs: int) -> tuple[float, float, float, int, dict[str, float], float]:
    """(requests/s, p50 ms, p99 ms, errors, median ms of each server stage, the clients' CPU ms per request)
    for `count` requests at `concurrency`, sent from up to `procs` client processes that start together."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = max(1, min(procs, concurrency, count))
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    counts = [count // procs + (i < count % procs) for i in range(procs)]
    clients = [ctx.Process(target=_client_process, args=(url, files, data, shares[i], counts[i], barrier, results))
               for i in range(procs)]
    for client in clients:
        client.start()
    got: list[ClientRun] = [results.get(timeout=600) for _ in clients]
    for client in clients:
        client.join()
    latencies = [ms for run in got for ms in run.latencies]
    wall = max(run.end for run in got) - min(run.start for run in got)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    by_stage: dict[str, list[float]] = {}
    for answer in (answer for run in got for answer in run.stages):
        for name, ms in answer.items():
            by_stage.setdefault(name, []).append(ms)
    return (count / wall, statistics.median(latencies), q[98], sum(run.errors for run in got),
            {name: statistics.median(v) for name, v in by_stage.items()}, sum(run.cpu_s for run in got) * 1000 / count)


def wait_ready(url: str, proc, workers: int, started: float, timings: dict) -> float:
    """Seconds from `started` to the first `/readyz` 200; then, with several workers sharing the socket,
    waits until each has said 200, so no load meets a loading worker. Workers are told apart by the `pid`
    /readyz gives. `timings` gets the first ready process's account (model_load, warmup, cold_start)."""
    from concurrent.futures import ThreadPoolExecutor

    ready_s = None
    seen: set[tuple] = set()

    def ask(_: int) -> dict | None:
        try:
            r = requests.get(url + "readyz", timeout=2)
        except requests.RequestException:
            return None
        body = r.json()
        if body.get("status") == "failed":
            raise SystemExit(f"not ready: {body.get('reason')}")
        return body if r.status_code == 200 else None

    with ThreadPoolExecutor(2 * workers) as pool:
        while time.perf_counter() - started < 300:
            if proc.poll() is not None:
                raise SystemExit(f"the function exited with {proc.returncode}")
            for body in pool.map(ask, range(1 if ready_s is None else 2 * workers)):
                if body is None:
                    continue
                if ready_s is None:
                    ready_s = time.perf_counter() - started
                    timings.update(body.get("timings_s", {}))
                    if body.get("cuda_graphs"):  # what CUDA_GRAPHS did, role by role
                        print(f"  CUDA graphs: {body['cuda_graphs']}", flush=True)
                seen.add(body["pid"])
            if ready_s is not None and len(seen) >= workers:
                return ready_s
            time.sleep(0.02)
    raise SystemExit("the function was not ready within 300 s")


def batch_warmup(url: str, limit_s: float = 20.0) -> float | None:
    """Seconds the server took to warm its batch sizes after turning ready (pipeline/batching.py), once
    it has, so loads are measured in steady state; None if it said nothing within `limit_s`."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        timings = requests.get(url + "readyz", timeout=5).json().get("timings_s", {})
        if "batch_warmup" in timings:
            return timings["batch_warmup"]
        time.sleep(0.1)
    return None


def serve_config(config: str, models: Path, cache: Path, providers: str, images: dict, source: bytes,
                 levels: list[int], requests_per_row: int, client_procs: int, gil_seconds: float = 0.0) -> dict:
    """Start the function with `config`'s settings and measure cold start, stages, throughput, memory, and
    with `gil_seconds` (one worker) where the process holds the GIL per request (bench/gil.py)."""
    name, workers = parse_config(config)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    settings = config_env(name)
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(cache), "EXECUTION_PROVIDERS": providers,
           "MAX_INFLIGHT": str(max(levels)), "K_REVISION": "bench-gpu", "DRAIN_SECONDS": "0",
           "WORKERS": str(workers), **settings}
    started = time.perf_counter()
    proc = spawn(function_command(port), env)
    out: dict = {"config": config, "workers": workers, "rows": [], "stages": [], "memory": [], "timings_s": {}}
    try:
        out["ready_s"] = wait_ready(url, proc, workers, started, out["timings_s"])
        first = requests.post(url, files={"source": source, "target": images["1080p"][0]}, timeout=300)
        out["first_s"] = time.perf_counter() - started
        assert first.status_code == 200, first.text
        merging = settings.get("BATCH_WAIT_MS", "0") != "0" and settings.get("BATCH_MAX") != "1"
        out["batch_warmup_s"] = batch_warmup(url) if merging else None
        print(f"[{config}] cold start: ready {out['ready_s']:.2f} s, first answer {out['first_s']:.2f} s; "
              f"the process's own account: {out['timings_s']}; batch sizes warmed after ready in "
              f"{out['batch_warmup_s']} s", flush=True)
        pids = worker_pids(proc.pid)  # every worker has answered /readyz: the set is complete
        server = sorted({proc.pid, *pids})  # with WORKERS > 1 the supervisor too
        for image, (target, data) in images.items():
            count = requests_per_row if image != "solvay" else max(3, requests_per_row // 4)
            files = {"source": source, "target": target}
            for c in levels:
                n = max(count, c)
                cpu_before, machine_before = cpu_seconds(server), machine_cpu()
                with UtilSampler() as util:
                    rps, p50, p99, errors, stages, client_cpu_ms = load(url, files, data, c, n, client_procs)
                gpu_util = statistics.mean(util.samples) if util.samples else float("nan")
                # the server's CPU, not the clients', over the row's requests and each connection's warm-up request
                cpu_ms = (cpu_seconds(server) - cpu_before) * 1000 / (n + c)
                machine = busy_percent(machine_before, machine_cpu())
                out["rows"].append([image, c, rps, p50, p99, errors, gpu_util, cpu_ms, client_cpu_ms, machine, config])
                out["stages"].append([config, image, c, *(f"{k} {v:.1f}" for k, v in stages.items())])
                print(table(ROW_HEADERS, [out["rows"][-1]]), "\n  server stages, median ms: " +
                      " | ".join(out["stages"][-1][3:]), flush=True)
        if gil_seconds > 0 and len(pids) == 1:
            out["gil"] = gil_profile(url, pids[0], images["1080p"], source, out["rows"], gil_seconds, client_procs, config)
        out["serving_processes"] = len(pids)
        out["memory"] = [[config, *row] for row in gpu_memory_mib({str(p) for p in pids})]
    finally:
        stop_process(proc)
    return out


def gil_profile(url: str, pid: int, image: tuple[bytes, dict], source: bytes, rows: list[list], seconds: float,
                client_procs: int, config: str) -> dict | None:
    """1080p fusions at concurrency 8 for about `seconds` (the count from that row's requests/s) while py-spy
    records the GIL-held samples of the serving process; their summary per request, None without py-spy."""
    from bench import gil

    measured = [r for r in rows if r[0] == "1080p" and r[1] == 8]
    count = max(16, int((measured[0][2] if measured else 10.0) * seconds))
    started = gil.start(pid)
    if started[0] is None:
        print(f"[{config}] GIL profile skipped: {started[2]}", flush=True)
        return None
    rps, *_ = load(url, {"source": source, "target": image[0]}, image[1], 8, count, client_procs)
    samples, why = gil.finish(started)  # stopped once the load is done: the samples are those of its requests
    if samples is None:
        print(f"[{config}] GIL profile skipped: {why}", flush=True)
        return None
    summary = gil.summarise(samples, count)
    gil.print_summary(summary, f"[{config}] 1080p, concurrency 8, {count} requests ({rps:.1f} req/s)")
    return summary


# server CPU ms/req: CPU time of the serving processes per request (the load's clients excluded); machine CPU %:
# the whole machine's, clients included. With both GPU and server CPU far from full, the wait is elsewhere.
ROW_HEADERS = ["image", "concurrency", "req/s", "p50 ms", "p99 ms", "errors", "GPU util %", "server CPU ms/req",
               "client CPU ms/req", "machine CPU %", "config"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU with the small stand-ins")
    parser.add_argument("--proxies", action="store_true", help="with --cpu: the compute-realistic proxies all the same")
    parser.add_argument("--requests", type=int, default=200, help="requests per row (a quarter for solvay)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--images", default="1080p,4k,solvay")
    parser.add_argument("--model-runs", type=int, default=50)
    parser.add_argument("--configs", default="defaults,unbatched", help=f"of {', '.join(CONFIGS)} (or several joined "
                        "by +: graphs+nvimgcodec), each with @N for WORKERS=N processes sharing the GPU (default 1); "
                        "the first is the one measured, the second its baseline in the same run")
    parser.add_argument("--model-only", default="fp32", help="configs measured in the model table only (not served)")
    parser.add_argument("--client-procs", type=int, default=max(1, min(4, (os.cpu_count() or 1) // 4)),
                        help="load-generating processes")
    parser.add_argument("--gil-seconds", type=float, default=0.0, help="after each one-worker config's rows, "
                        "profile where the serving process holds the GIL for about this long (bench/gil.py, py-spy)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--work", type=Path, help="a folder for the model set and prepared graphs, kept and reused "
                        "by a later run (default: a new temporary folder)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    configs = args.configs.split(",")
    for config in configs:
        parse_config(config)
    providers = "cpu" if args.cpu else "cuda"
    standins = args.cpu and not args.proxies
    work = args.work or Path(tempfile.mkdtemp(prefix="ff-bench-gpu-"))
    t = time.perf_counter()
    models = work / "models"
    reused = (models / "current").exists()
    if not reused:
        build_models(models, standins)
    print(f"model set {'reused from' if reused else 'built in'} {work if reused else f'{time.perf_counter() - t:.1f} s'} "
          f"({'stand-ins' if standins else 'compute-realistic proxies'})",
          flush=True)
    model_rows: list[list] = []
    active: dict[str, str] = {}
    extra = [c for c in args.model_only.split(",") if c]
    for name in dict.fromkeys(parse_config(c)[0] for c in [*configs, *extra]):
        if graphs_of(name) != name:  # replays per model (CUDA_GRAPHS) are bench.cuda_graph's
            print(f"[{name}] serves the defaults' graphs: no rows of its own in the model table", flush=True)
    # also prepares each config's graphs, so that the cold starts below are prepared starts
    for name in dict.fromkeys(graphs_of(parse_config(c)[0]) for c in [*configs, *extra]):
        t = time.perf_counter()
        rows, active = per_model_ms(models, work / "cache", providers, args.model_runs, name)
        model_rows += rows
        print(f"[{name}] prepared and measured in {time.perf_counter() - t:.1f} s", flush=True)
    model_headers = ["config", "model", "provider", "ms per run", "ms per row of 8", "fp16 (error)", "no batch axis: why"]
    print(table(model_headers, model_rows), flush=True)

    source = (SHARED / "images" / "obama.jpg").read_bytes()
    every = {"1080p": (frame_with_face(1920, 1080), {}), "4k": (frame_with_face(3840, 2160), {}),
             "solvay": ((SHARED / "images" / "solvay_conference_1927.png").read_bytes(), {"faces": "all"})}
    images = {name: every[name] for name in args.images.split(",")}
    images.setdefault("1080p", every["1080p"])  # the first answer of the cold start
    runs = []
    for config in configs:  # a config that fails is reported and the others still run
        try:
            runs.append(serve_config(config, models, work / "cache", providers, images, source, levels, args.requests,
                                     args.client_procs, args.gil_seconds))
            if args.json:  # what is done so far, in case a time limit ends the run before the summary
                args.json.write_text(json.dumps({"partial": True, "models": model_rows, "runs": runs}, indent=1,
                                                default=str))
        except (SystemExit, AssertionError, OSError, requests.RequestException) as exc:
            print(f"[{config}] FAILED: {exc}", flush=True)
    print()
    print(f"function on {'CPU' if args.cpu else 'GPU'} ({providers}; {active}); {args.requests} requests per row "
          f"(solvay: a quarter); {args.client_procs} client processes; {os.cpu_count()} CPUs")
    for run in runs:
        print(f"[{run['config']}] process start -> /readyz 200: {run['ready_s']:.2f} s; -> first answer: {run['first_s']:.2f} s "
              f"({', '.join(f'{k} {v} s' for k, v in run['timings_s'].items())})")
    print(table(model_headers, model_rows))
    rows = [row for run in runs for row in run["rows"]]
    print(table(ROW_HEADERS, rows))
    for other in runs[1:]:
        base = {(r[0], r[1]): r for r in other["rows"]}
        gains = [[r[0], r[1], r[2] / base[(r[0], r[1])][2], base[(r[0], r[1])][3] - r[3]]
                 for r in runs[0]["rows"] if (r[0], r[1]) in base]
        print(table(["image", "concurrency", f"req/s {runs[0]['config']} / {other['config']}",
                     f"p50 ms saved vs {other['config']}"], gains))
    print("server stages (Server-Timing), median ms, by config, image and concurrency:")
    for run in runs:
        for row in run["stages"]:
            print("  " + " | ".join(map(str, row)))
    memory = [row for run in runs for row in run["memory"]]
    if memory:
        print(table(["config", "worker pid", "GPU memory MiB"], memory))
    if not runs:
        raise SystemExit("no config could be served")
    main_run = runs[0]
    result = {"ready_s": main_run["ready_s"], "first_s": main_run["first_s"], "models": model_rows,
              "rows": main_run["rows"], "runs": runs, "memory": memory}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
