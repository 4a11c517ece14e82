"""At-least-once delivery of segment events under fire: bench/replay.py's harness for the video fan-out.

J clips are requested at once from N workers (`python -m function.serve`, MAX_INFLIGHT=1) behind the
local sink (bench/video_dispatcher.py), which duplicates segment events, hands them out in random
order and redelivers every one that is not acknowledged, while a killer SIGKILLs a worker at random
moments (mostly mid-segment: fusing is what workers spend their time on) and starts it again on its
port. A reader polls every part and output the whole time and counts each read that is not a whole
clip. At the end:

- lost: a requested job that is not done, or a done job missing a part;
- duplicated: a segment fused more than once (part records carry a fusion id; the reader sees every
  one written) or a job stitched more than once (the output marker's stitch id);
- partial: a part or output that is not a whole clip when read (during the run or at its end).

All three should be 0. Run: python -m bench.video_replay [--jobs 4 --seconds 4 --workers 2 --duration 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import av

from bench.common import standin_models, table
from bench.video_dispatcher import Dispatcher
from bench.video_fanout import Workers, env_for, make_clip, store_for

_LOCK = threading.Lock()


def frame_count(path: Path) -> int | None:
    """Frames of a whole clip; None when it cannot be read to its end."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    except (av.error.FFmpegError, OSError, ValueError):
        return None


def run(jobs: int = 4, seconds: float = 4.0, workers: int = 2, duration: float = 300.0, kill_every: tuple = (1.0, 3.0),
        duplicate: float = 0.5, seed: int = 11, quiet: bool = False, min_kills: int = 1) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="ff-video-replay-") as tmp:
        root = store_for(Path(tmp) / "store")
        models = standin_models(Path(tmp) / "models", enhancer=False)
        clip = make_clip(Path(tmp) / "clip.mp4", seconds, 10, 320, 240)
        for j in range(jobs):
            (root / "in" / f"clip{j}.mp4").write_bytes(clip.read_bytes())
        dispatcher = Dispatcher(duplicate=duplicate, shuffle=True, seed=seed)
        pool = Workers(workers, env_for(models, root, dispatcher.url, 1.0))
        pool.start()
        dispatcher.attach(pool.urls)
        jobs_dir = root / "out" / ".facefusion-jobs"
        stop = threading.Event()
        stats = {"kills": 0, "reads": 0, "partial_reads": 0}
        fusion_ids: dict[tuple[str, int], set[str]] = {}
        seen_records: dict[Path, float] = {}

        def killer() -> None:
            while not stop.wait(rng.uniform(*kill_every)):
                victim = rng.randrange(workers)
                proc = pool.procs[victim]
                if proc is not None and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    stats["kills"] += 1
                    pool.start(victim)  # the pod is replaced; the dispatcher redelivers what it was doing

        def reader() -> None:
            while not stop.is_set():
                for record in list(jobs_dir.glob("*/part-*.json")) if jobs_dir.exists() else []:
                    try:
                        mtime = record.stat().st_mtime
                        if seen_records.get(record) == mtime:
                            continue
                        doc = json.loads(record.read_text())
                    except (OSError, ValueError):
                        continue
                    seen_records[record] = mtime
                    with _LOCK:
                        fusion_ids.setdefault((record.parent.name, doc["segment"]), set()).add(doc["fusion_id"])
                    part = record.with_suffix(".mp4")
                    stats["reads"] += 1
                    if frame_count(part) != doc["frames"]:
                        stats["partial_reads"] += 1
                for out in list((root / "out").glob("*.mp4")):
                    stats["reads"] += 1
                    if frame_count(out) is None:
                        stats["partial_reads"] += 1
                time.sleep(0.05)

        threads = [threading.Thread(target=killer, daemon=True), threading.Thread(target=reader, daemon=True)]
        for t in threads:
            t.start()
        from bench.video_fanout import request

        job_ids = {}
        deadline = time.time() + duration
        for j in range(jobs):
            while time.time() < deadline:  # the request event too is retried until it is acknowledged
                try:
                    job_ids[request(pool.urls[j % workers], root, f"replay-{j}", name=f"clip{j}")] = j
                    break
                except Exception:
                    time.sleep(0.2)
        while time.time() < deadline:
            done = {e.data["job"] for e in dispatcher.completed}
            if set(job_ids) <= done and stats["kills"] >= min_kills:
                break
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(10)
        pool.stop()
        dispatcher.stop()

        lost = duplicated = partial = 0
        expected = clip_frames = frame_count(clip) or 0
        for job_id in job_ids:
            folder = jobs_dir / job_id
            doc = json.loads((jobs_dir / f"{job_id}.json").read_text())
            done = folder / "done.json"
            if not done.exists():
                lost += 1
                continue
            for seg in doc["segments"]:
                record = folder / f"part-{seg['index']:04d}.json"
                if not record.exists():
                    lost += 1
                    continue
                with _LOCK:
                    fusion_ids.setdefault((job_id, seg["index"]), set()).add(json.loads(record.read_text())["fusion_id"])
                if frame_count(record.with_suffix(".mp4")) != seg["end_frame"] - seg["start_frame"]:
                    partial += 1
            out = Path(doc["output"].removeprefix("file://"))
            if frame_count(out) != expected:
                partial += 1
            marker = json.loads(Path(str(out) + ".facefusion.json").read_text())
            if marker.get("stitch_id") != json.loads(done.read_text()).get("stitch_id"):
                duplicated += 1  # stitched again after the job was marked done
        duplicated += sum(len(ids) - 1 for ids in fusion_ids.values())
        completed_events = len(dispatcher.completed)
        result = {"jobs": jobs, "segments": sum(len(json.loads((jobs_dir / f"{j}.json").read_text())["segments"])
                                                for j in job_ids),
                  "workers": workers, "kills": stats["kills"], "deliveries": dispatcher.stats["deliveries"],
                  "redeliveries": dispatcher.stats["redeliveries"], "duplicates_sent": dispatcher.stats["duplicates_sent"],
                  "dead_letters": dispatcher.stats["dead_letters"], "completed_events": completed_events,
                  "lost": lost + (jobs - len(job_ids)), "duplicated": duplicated, "partial": partial + stats["partial_reads"],
                  "reads_checked": stats["reads"], "frames_per_output": clip_frames}
        if not quiet:
            print(table(list(result), [list(result.values())]))
            print(json.dumps(result))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.video_replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=300.0, help="give up after this long")
    args = parser.parse_args()
    result = run(args.jobs, args.seconds, args.workers, args.duration)
    sys.exit(1 if result["lost"] + result["duplicated"] + result["partial"] else 0)


if __name__ == "__main__":
    main()
