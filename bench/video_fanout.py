"""The video fan-out across worker processes: a clip fused by N = 1, 2, 4 real function processes
(`python -m function.serve`, MAX_INFLIGHT=1 each) behind a local sink (bench/video_dispatcher.py, the
stand-in for the Broker and the segment Trigger), against the same clip fused whole by one process
through the direct path (no segments), in the same run.

For each N: wall time from the `fusion.requested` event to the `fusion.completed` event, total CPU
time of the workers, and whether every decoded output frame equals the N = 1 output's. The overhead
of the fan-out, as a share of the single-process (N = 1) wall time: planning (fetch, probe, plan:
`plan_seconds` of the job document), segment boundaries (the parts' fusion seconds summed, less the
whole clip's fusion seconds through the direct path) and stitching (`stitch_seconds`).

Run: python -m bench.video_fanout [--seconds 60 --fps 10 --width 640 --height 360 --workers 1,2,4]
(`python -m bench.video` prints `fanout_report()`); CI runs a reduced form (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from bench.common import SHARED, free_port, function_command, spawn, standin_models, stop_process, table
from bench.video_dispatcher import Dispatcher


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and of its finished children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def make_clip(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    from devtools.clips import ClipSpec
    from devtools.clips import make_clip as write

    spec = ClipSpec(frames=int(round(seconds * fps)), width=width, height=height, fps=Fraction(fps), gop=fps,
                    audio=True, face_height=0.6, crf=20)
    return write(path, SHARED / "images" / "obama.jpg", spec)


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def wait_ready(url: str, proc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


class Workers:
    """N function processes on fixed ports (a killed one restarts on its port), sharing one env."""

    def __init__(self, count: int, env: dict[str, str]) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.env = env
        self.procs: list = [None] * count

    def start(self, index: int | None = None) -> None:
        for i in ([index] if index is not None else range(len(self.ports))):
            self.procs[i] = spawn(function_command(self.ports[i]), {**self.env, "PORT": str(self.ports[i])})
        for i in ([index] if index is not None else range(len(self.ports))):
            wait_ready(self.urls[i], self.procs[i])

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs if p is not None and p.poll() is None)

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                stop_process(proc)


def store_for(root: Path) -> Path:
    for folder in ("faces", "in", "out"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "faces" / "src.jpg").write_bytes((SHARED / "images" / "biden.jpg").read_bytes())
    return root


def env_for(models: Path, root: Path, sink: str, segment_seconds: float) -> dict[str, str]:
    return {"MODEL_PATH": str(models), "CACHE_PATH": str(root / "cache"), "OUTPUT_URI": f"file://{root}/out/{{stem}}.jpg",
            "ALLOWED_URI_PREFIXES": f"file://{root}/", "VIDEO_SEGMENT_SECONDS": str(segment_seconds), "MAX_INFLIGHT": "1",
            "K_SINK": sink, "VIDEO_MAX_SYNC_SECONDS": "100000", "VIDEO_MAX_SECONDS": "100000", "DRAIN_SECONDS": "0",
            "OMP_NUM_THREADS": "1"}


def request(url: str, root: Path, event_id: str, name: str = "clip") -> str:
    """Send `fusion.requested` for `<root>/in/<name>.mp4` (output `fused` for the clip, else `<name>`)."""
    out = "fused" if name == "clip" else name
    event = CloudEvent({"type": "dev.facefusion.fusion.requested", "source": "/bench", "id": event_id},
                       {"source": f"file://{root}/faces/src.jpg", "target": f"file://{root}/in/{name}.mp4",
                        "output": f"file://{root}/out/{out}.mp4"})
    headers, body = to_binary(event)
    reply = requests.post(url + "/", headers=headers, data=body, timeout=120)
    if reply.status_code != 202:
        raise RuntimeError(f"fusion.requested answered {reply.status_code}: {reply.text[:300]}")
    return reply.headers["Location"].rsplit("/", 1)[-1]


def run_one(models: Path, root: Path, clip: Path, count: int, segment_seconds: float, whole: bool) -> dict:
    store_for(root)
    (root / "in" / "clip.mp4").write_bytes(clip.read_bytes())
    dispatcher = Dispatcher()
    workers = Workers(count, env_for(models, root, dispatcher.url, segment_seconds))
    try:
        workers.start()
        dispatcher.attach(workers.urls)
        cpu0, started = workers.cpu(), time.perf_counter()
        job_id = request(workers.urls[0], root, f"bench-{count}")
        completed = dispatcher.wait_completed(job_id, timeout=3600)
        wall = time.perf_counter() - started
        cpu = workers.cpu() - cpu0
        if completed is None:
            raise RuntimeError(f"job {job_id} did not complete")
        jobs = root / "out" / ".facefusion-jobs"
        doc = json.loads((jobs / f"{job_id}.json").read_text())
        done_path = jobs / job_id / "done.json"  # written just after fusion.completed is sent
        deadline = time.time() + 60
        while not done_path.exists() and time.time() < deadline:
            time.sleep(0.05)
        done = json.loads(done_path.read_text())
        parts = [json.loads(p.read_text()) for p in sorted((jobs / job_id).glob("part-*.json"))]
        row = {"workers": count, "segments": len(doc["segments"]), "wall_s": wall, "cpu_s": cpu,
               "plan_s": doc["plan_seconds"], "stitch_s": done["stitch_seconds"] or 0.0,
               "parts_fusion_s": sum(p["seconds"] for p in parts), "output": root / "out" / "fused.mp4"}
        if whole:  # the baseline: the whole clip fused in one go by one process, through the direct path
            cpu0, started = workers.cpu(), time.perf_counter()
            reply = requests.post(workers.urls[0] + "/", timeout=3600, json={
                "source": f"file://{root}/faces/src.jpg", "target": f"file://{root}/in/clip.mp4",
                "output": f"file://{root}/out/whole.mp4"})
            if reply.status_code != 200:
                raise RuntimeError(f"direct whole-clip fusion answered {reply.status_code}: {reply.text[:300]}")
            row["whole_wall_s"] = time.perf_counter() - started
            row["whole_cpu_s"] = workers.cpu() - cpu0
            row["whole_fusion_s"] = reply.json()["report"]["seconds"]
        return row
    finally:
        workers.stop()
        dispatcher.stop()


def run(seconds: float = 60.0, fps: int = 10, width: int = 640, height: int = 360, workers: tuple[int, ...] = (1, 2, 4),
        segment_seconds: float = 4.0, quiet: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="ff-bench-fanout-") as tmp:
        folder = Path(tmp)
        models = standin_models(folder / "models", enhancer=False)
        clip = make_clip(folder / "clip.mp4", seconds, fps, width, height)
        rows = []
        for n in workers:
            rows.append(run_one(models, folder / f"n{n}", clip, n, segment_seconds, whole=(n == workers[0])))
            if not quiet:
                print({k: v for k, v in rows[-1].items() if k != "output"}, flush=True)
        reference = frames_of(rows[0]["output"])
        base = rows[0]
        single = base["wall_s"]
        for row in rows:
            frames = frames_of(row["output"])
            row["frames"] = len(frames)
            row["equal_frames"] = len(frames) == len(reference) and all(
                np.array_equal(a, b) for a, b in zip(frames, reference, strict=True))
            row["speedup"] = single / row["wall_s"]
        overhead = {"plan_pct": 100 * base["plan_s"] / single, "stitch_pct": 100 * base["stitch_s"] / single,
                    "boundaries_pct": 100 * (base["parts_fusion_s"] - base["whole_fusion_s"]) / single,
                    # by CPU time, which other load on the machine disturbs less than wall time
                    "boundaries_cpu_pct": 100 * (base["cpu_s"] - base["whole_cpu_s"]) / base["cpu_s"]}
        result = {"clip": {"seconds": seconds, "fps": fps, "width": width, "height": height, "frames": len(reference)},
                  "rows": [{k: v for k, v in r.items() if k != "output"} for r in rows], "overhead": overhead,
                  "whole_clip_direct_s": base["whole_wall_s"], "whole_clip_direct_cpu_s": base["whole_cpu_s"]}
        if not quiet:
            print(fanout_table(result))
        return result


def fanout_table(result: dict) -> str:
    clip = result["clip"]
    lines = [f"clip: {clip['seconds']:g} s, {clip['frames']} frames at {clip['fps']} fps, {clip['width']}x{clip['height']}, "
             f"one face, AAC audio; stand-in models with the real SCRFD on the CPU; workers: python -m function.serve, "
             f"MAX_INFLIGHT=1, behind a local sink (bench/video_dispatcher.py)"]
    rows = [["whole clip, direct (baseline)", "-", result["whole_clip_direct_s"], result["whole_clip_direct_cpu_s"], "-", "-"]]
    for r in result["rows"]:
        rows.append([f"fan-out, N = {r['workers']}", r["segments"], r["wall_s"], r["cpu_s"], f"{r['speedup']:.2f}x",
                     "yes" if r["equal_frames"] else "NO"])
    lines.append(table(["run", "segments", "wall s", "worker CPU s", "speed-up vs N=1", "frames equal N=1"], rows))
    o = result["overhead"]
    lines.append(f"overhead, share of the single-process (N = 1) wall time: planning {o['plan_pct']:.2f} %, "
                 f"segment boundaries {o['boundaries_pct']:.2f} % (by CPU time: {o['boundaries_cpu_pct']:.2f} %), "
                 f"stitching {o['stitch_pct']:.2f} %")
    return "\n".join(lines)


def fanout_report(**kwargs) -> str:
    """The table alone, for `python -m bench.video` (kwargs as for `run`)."""
    return fanout_table(run(quiet=True, **kwargs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.video_fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--segment-seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    result = run(args.seconds, args.fps, args.width, args.height, tuple(int(n) for n in args.workers.split(",")),
                 args.segment_seconds)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
