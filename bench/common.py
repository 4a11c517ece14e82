"""Helpers shared by the benchmarks: locating test data and building stand-in model sets."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCRFD = SHARED / "models" / "scrfd_2.5g_bnkps.onnx"


def insightface_t1() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("insightface is not installed: pip install -e '.[cpu,dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg"


def standin_models(root: Path | None = None, **kwargs) -> Path:
    from devtools.standins import write_test_models

    if not SCRFD.is_file():
        raise SystemExit(f"{SCRFD} is missing: the benchmarks need the real SCRFD detector from ../shared")
    root = root or Path(tempfile.mkdtemp(prefix="ff-bench-models-"))
    write_test_models(root, detector=SCRFD, **kwargs)
    return root


def frame_with_face(width: int, height: int, face_height: int | None = None, top: int | None = None) -> bytes:
    """A `width`x`height` JPEG (quality 92) with one face: obama.jpg scaled to `face_height` (default 60%
    of the frame), centred across and at `top` (default centred) on a plain background."""
    face = cv2.imread(str(SHARED / "images" / "obama.jpg"))
    scale = (face_height or height * 0.6) / face.shape[0]
    face = cv2.resize(face, None, fx=scale, fy=scale)
    frame = np.full((height, width, 3), 120, np.uint8)
    x = (width - face.shape[1]) // 2
    y = (height - face.shape[0]) // 2 if top is None else top
    frame[y:y + face.shape[0], x:x + face.shape[1]] = face
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def single_face_1080p() -> bytes:
    """A 1920x1080 JPEG with one face: obama.jpg 1000 px high, centred on a plain background."""
    return frame_with_face(1920, 1080, face_height=1000, top=40)


def median_ms(fn: Callable[[], object], repeat: int, warm: bool = True) -> float:
    """Median ms of `repeat` calls of `fn`, after one call that is not counted (`warm`: the first call
    allocates, and on a GPU creates handles and plans)."""
    if warm:
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def taking_turns(calls: Mapping[str, Callable[[], object]], repeat: int, warm: bool = True) -> dict[str, float]:
    """Median ms of each of `calls`, made in turn `repeat` times (the order reversed every other time, after
    one uncounted call each when `warm`), so that a shared machine's load and the allocator's state fall
    on all of them alike: run one after the other, a 4K decode's time moved 2x with whether its buffer
    was fresh."""
    if warm:
        for fn in calls.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    for i in range(repeat):
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def concurrent_rate(call: Callable[[], object], concurrency: int, count: int) -> tuple[float, float]:
    """(calls/s, p50 ms) of `count` calls of `call` from `concurrency` threads at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        start = time.perf_counter()
        call()
        with lock:
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - start), statistics.median(latencies)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers, *[[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def function_command(port: int) -> list[str]:
    """The function started as production starts it (`python -m function.serve`, README Serving) on loopback."""
    import sys

    return [sys.executable, "-m", "function.serve", "--host", "127.0.0.1", "--port", str(port)]


def old_function_command(port: int) -> list[str]:
    """The set-up before function/serve.py (plain functions-framework: gunicorn's threaded worker with
    its defaults), kept only as the baseline of bench/attack.py."""
    import sys

    return [str(Path(sys.executable).parent / "functions-framework"), "--source", "function/main.py", "--target", "fuse",
            "--host", "127.0.0.1", "--port", str(port)]


def spawn(cmd: list[str], env: dict[str, str]):
    """Start a server in its own process group (so stop_process can end it and any workers)."""
    import os
    import subprocess

    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def worker_pids(pid: int) -> list[int]:
    """The serving processes: a WORKERS > 1 supervisor's (or gunicorn master's) children; the process
    itself when it has none (the default: one process serves)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()] or [pid]
    except OSError:
        return [pid]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used so far; a process that has gone counts 0."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime: fields 14 and 15 of stat(5)
    return total


def machine_cpu() -> tuple[int, int]:
    """(busy, all) clock ticks of the whole machine's CPUs so far, from /proc/stat; (0, 0) where it is
    missing. Whole ticks, so that a difference of two readings never puts busy above all."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle and iowait
    return sum(values[:8]) - idle, sum(values[:8])


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The machine's CPU use between two `machine_cpu` readings, in percent (nan without /proc/stat); kept
    within 0-100, since the kernel's iowait count may step back."""
    busy, every = after[0] - before[0], after[1] - before[1]
    return min(100.0, max(0.0, 100.0 * busy / every)) if every > 0 else float("nan")


def memory(pid: int) -> dict[str, float]:
    """RSS, VmHWM (peak RSS), Pss and Private of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            out["peak_rss" if line.startswith("VmHWM") else "rss"] = int(line.split()[1]) / 1024
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        rollup[key] = int(value.split()[0]) / 1024
    out["pss"] = rollup.get("Pss", 0.0)
    out["private"] = rollup.get("Private_Clean", 0.0) + rollup.get("Private_Dirty", 0.0)
    return out


def start_process(cmd: list[str], env: dict[str, str], health_url: str, timeout: float = 120):
    """Start a server process and wait until `health_url` answers 200."""
    import time
    import urllib.request

    proc = spawn(cmd, env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"{health_url} not ready after {timeout} s")


def prepare_graphs(env: Mapping[str, str], checkout: Path = REPO) -> None:
    """`python -m warmup prepare` in `checkout` with `env`, as the init container runs it before a start;
    where it fails, the bench stops with its reason (EXECUTION_PROVIDERS=cuda on the CPU build, say)."""
    done = subprocess.run([sys.executable, "-m", "warmup", "prepare"], cwd=checkout, env=dict(env), capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip() or done.stdout.strip() or f"warmup prepare failed in {checkout}")


def start_function(env: Mapping[str, str], timeout: float = 120):
    """The function as production starts it (`function_command`) on a free loopback port, once `/readyz`
    answers 200: (the process, its base URL ending in /)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    return start_process(function_command(port), dict(env), url + "readyz", timeout), url


def stop_process(proc, timeout: float = 30, on_timeout=None) -> None:
    """SIGTERM to the server's process group (it drains), SIGKILL if it has not left within `timeout`
    (after calling `on_timeout`, which may look at the processes first)."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if on_timeout is not None:
                on_timeout()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
