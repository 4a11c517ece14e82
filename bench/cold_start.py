"""Cold start: process start to ready and to the first fusion, peak memory, and a second worker's
private memory; against the insightface way of loading the same models, in the same run.

Proxy models of the real sizes (detector 13.6 MB, recognizer 166 MB, swapper 554 MB; stand-in graphs
whose padding weights are really used) are generated once under $TMPDIR and never committed. The page
cache is warm for both sides (the models are read once before timing), as on a node whose volume
served a pod before. Our side runs `python -m warmup prepare` first, as the init container does.
Run: python -m bench.cold_start [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from bench.common import (
    REPO,
    SCRFD,
    SHARED,
    free_port,
    function_command,
    memory,
    prepare_graphs,
    single_face_1080p,
    spawn,
    stop_process,
    table,
    worker_pids,
)
from bench.form_client import multipart_form

SIZES_MB = {"detector": 13.6, "recognizer": 166, "swapper": 554}


def proxy_models() -> Path:
    from devtools.standins import write_test_models

    root = Path(tempfile.gettempdir()) / "ff-coldstart-proxies"
    if not (root / "current" / "manifest.json").is_file():
        write_test_models(root, detector=SCRFD, version="proxy", enhancer=False, pad_mb=SIZES_MB)
    for path in (root / "proxy").glob("*.onnx"):
        with open(path, "rb") as fh:  # warm the page cache for both sides
            while fh.read(1 << 24):
                pass
    return root


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the function exited during start-up")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.time()
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError("not ready")


def post_fusion(url: str, source: bytes, target: bytes) -> None:
    body, content_type = multipart_form({"source": source, "target": target})
    req = urllib.request.Request(url + "/", data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200, r.status
        r.read()


def start_ours(models: Path, cache: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    t0 = time.time()
    proc = spawn(function_command(port), {"MODEL_PATH": str(models), "CACHE_PATH": str(cache)})
    return proc, f"http://127.0.0.1:{port}", t0


BASELINE = textwrap.dedent("""
    import time, json, sys
    import numpy as np
    from insightface.model_zoo import model_zoo
    d = sys.argv[1]
    det = model_zoo.get_model(d + '/det.onnx', providers=['CPUExecutionProvider'])
    det.prepare(-1, input_size=(640, 640))
    rec = model_zoo.get_model(d + '/rec.onnx', providers=['CPUExecutionProvider'])
    rec.prepare(-1)
    swap = model_zoo.get_model(d + '/swap.onnx', providers=['CPUExecutionProvider'])
    loaded = time.time()
    frame = np.full((720, 1280, 3), 127, np.uint8)
    det.detect(frame, input_size=(640, 640))
    class F: pass
    face = F(); face.kps = np.array([[600, 350], [680, 350], [640, 390], [610, 430], [670, 430]], np.float32)
    face.normed_embedding = rec.get(frame, face); face.normed_embedding /= np.linalg.norm(face.normed_embedding)
    swap.get(frame, face, face, paste_back=True)
    ran = time.time()
    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
    print(json.dumps({'loaded': loaded, 'ran': ran, 'peak_rss': int(hwm) / 1024}))
""")


def compare_with_insightface(models: Path, cache: Path, runs: int) -> None:
    """Ours against the insightface way of loading the same files, then a second worker's memory."""
    source = (SHARED / "images" / "obama.jpg").read_bytes()
    target = single_face_1080p()

    ours_ready, ours_first, ours_rss = [], [], []
    for _ in range(runs):
        proc, url, t0 = start_ours(models, cache)
        try:
            ours_ready.append(wait_ready(url, proc) - t0)
            post_fusion(url, source, target)
            ours_first.append(time.time() - t0)
            workers = worker_pids(proc.pid)
            ours_rss.append(max(memory(w)["peak_rss"] for w in workers))
        finally:
            stop_process(proc)

    base_loaded, base_ran, base_rss = [], [], []
    for _ in range(runs):
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", BASELINE, str(models / "proxy")], cwd=REPO, capture_output=True,
                             text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        base_loaded.append(row["loaded"] - t0)
        base_ran.append(row["ran"] - t0)
        base_rss.append(row["peak_rss"])

    # two workers on the same models: what does the second one cost?
    (p1, u1, _), (p2, u2, _) = start_ours(models, cache), start_ours(models, cache)
    try:
        wait_ready(u1, p1)
        wait_ready(u2, p2)
        post_fusion(u1, source, target)
        post_fusion(u2, source, target)
        second = memory(worker_pids(p2.pid)[0])
        first = memory(worker_pids(p1.pid)[0])
    finally:
        stop_process(p1)
        stop_process(p2)

    med = statistics.median
    rows = [
        ["process start -> models loaded / ready (s)", med(base_loaded), med(ours_ready), med(base_loaded) / med(ours_ready)],
        ["... -> loaded + first runs / first fusion response (s)", med(base_ran), med(ours_first), med(base_ran) / med(ours_first)],
        ["peak RSS (MB)", med(base_rss), med(ours_rss), med(base_rss) / med(ours_rss)],
    ]
    print(f"cold start, proxy models of the real sizes ({', '.join(f'{k} {v:g} MB' for k, v in SIZES_MB.items())}), "
          f"median of {runs} fresh processes each, warm page cache, {os.cpu_count()} CPUs")
    print(table(["measure", "insightface way", "ours", "ratio"], rows))
    print(f"\ntwo workers on the same models: first worker PSS {first['pss']:.0f} MB, private {first['private']:.0f} MB; "
          f"second worker PSS {second['pss']:.0f} MB, private {second['private']:.0f} MB")
    print("ours, ready (s):", [round(x, 2) for x in ours_ready], " first response (s):", [round(x, 2) for x in ours_first])
    print("baseline, loaded (s):", [round(x, 2) for x in base_loaded], " with first runs (s):", [round(x, 2) for x in base_ran])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per side (default 5)")
    args = parser.parse_args()
    models = proxy_models()
    cache = Path(tempfile.mkdtemp(prefix="ff-coldstart-cache-"))
    env = {**os.environ, "MODEL_PATH": str(models), "CACHE_PATH": str(cache)}
    try:
        prepare_graphs(env)
        subprocess.run(["sync"], check=False)  # freshly written artefacts count as dirty pages until written back
        compare_with_insightface(models, cache, args.runs)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # the prepared graphs (~740 MB); the proxies are kept for reruns


if __name__ == "__main__":
    main()
