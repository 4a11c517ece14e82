"""At-least-once delivery under fire: N storage events, duplicated and out of order, replayed while
the worker (and now and then the whole server) is SIGKILLed and restarted at random moments.

Every event is retried until it is acknowledged, as Knative Eventing or MinIO would. At the end each
input object must have exactly one complete output; a reader polls the outputs the whole time and
counts every read that is not a complete image. Prints N, kills and lost/duplicated/partial counts.
Run: python -m bench.replay [--events 40 --duplicates 2 --seconds 120]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import requests

from bench.common import (
    SHARED,
    free_port,
    function_command,
    spawn,
    standin_models,
    stop_process,
    table,
    worker_pids,
)


class Server:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env, self.port, self.proc = env, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self.proc = spawn(function_command(self.port), self.env)

    def worker_pids(self) -> list[int]:
        return [p for p in worker_pids(self.proc.pid) if p != self.proc.pid]

    def kill_all(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


def make_inputs(folder: Path, count: int) -> dict[str, str]:
    """`count` distinct small JPEGs with one face; returns key -> eTag."""
    base = cv2.imread(str(SHARED / "images" / "biden.jpg"))
    base = cv2.resize(base, None, fx=0.35, fy=0.35)
    etags = {}
    for i in range(count):
        img = base.copy()
        img[0:4, 0:4] = i % 256  # a distinct corner makes a distinct object
        data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80 + i % 15])[1].tobytes()
        key = f"upload-{i:04d}.jpg"
        (folder / key).write_bytes(data)
        etags[key] = hashlib.md5(data).hexdigest()
    return etags


def notification(key: str, etag: str) -> dict:
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"in/{key}", "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
        "responseElements": {"x-amz-request-id": f"req-{key}"},
        "s3": {"bucket": {"name": "in"}, "object": {"key": key, "eTag": etag, "sequencer": etag[:16]}}}]}


def run(events: int = 40, duplicates: int = 2, seconds: float = 120, kill_every: tuple[float, float] = (0.6, 2.0),
        seed: int = 7, quiet: bool = False, min_kills: int = 1) -> dict:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="ff-replay-"))
    (root / "in").mkdir()
    (root / "faces").mkdir()
    (root / "faces" / "src.jpg").write_bytes((SHARED / "images" / "obama.jpg").read_bytes())
    etags = make_inputs(root / "in", events)
    models = standin_models(enhancer=False)
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(root / "cache"), "MAX_INFLIGHT": "2",
           "SOURCE_FACE_URI": f"file://{root}/faces/src.jpg", "INPUT_URI_TEMPLATE": f"file://{root}/{{bucket}}/{{name}}",
           "OUTPUT_URI": f"file://{root}/out/{{stem}}.fused.jpg", "ALLOWED_URI_PREFIXES": f"file://{root}/",
           "DRAIN_SECONDS": "0"}
    server = Server(env, free_port())
    server.start()
    stream = [k for k in etags for _ in range(1 + rng.randrange(duplicates + 1))]
    rng.shuffle(stream)  # duplicates and out-of-order redelivery

    stop = threading.Event()
    stats = {"kills_worker": 0, "kills_server": 0, "partial_reads": 0, "reads": 0, "deliveries": 0, "retries": 0}

    def killer() -> None:
        while not stop.wait(rng.uniform(*kill_every)):
            if rng.random() < 0.2:
                server.kill_all()
                stats["kills_server"] += 1
                server.start()
            else:
                pids = server.worker_pids()
                if pids:  # WORKERS > 1: the supervisor starts a new worker
                    os.kill(pids[0], signal.SIGKILL)
                    stats["kills_worker"] += 1
                else:  # one serving process (the default): it is the worker
                    server.kill_all()
                    stats["kills_server"] += 1
                    server.start()

    def reader() -> None:
        out = root / "out"
        while not stop.is_set():
            for path in list(out.glob("*.fused.jpg")) if out.exists() else []:
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                stats["reads"] += 1
                if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None or not data.endswith(b"\xff\xd9"):
                    stats["partial_reads"] += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=killer, daemon=True), threading.Thread(target=reader, daemon=True)]
    for t in threads:
        t.start()
    deadline = time.time() + seconds
    acknowledged = set()
    session = requests.Session()

    def _deliver(key: str) -> None:
        while time.time() < deadline:
            stats["deliveries"] += 1
            try:
                r = session.post(server.url + "/", json=notification(key, etags[key]), timeout=30)
                if r.status_code == 200 and all(o["status"] in ("done", "duplicate") for o in r.json()["results"]):
                    acknowledged.add(key)
                    return
            except requests.RequestException:
                pass
            stats["retries"] += 1
            time.sleep(0.05)

    # A fast machine can deliver the whole stream before the first kill: keep redelivering it (more
    # duplicates, as at-least-once allows) until the killer has struck `min_kills` times.
    passes = 0
    while passes == 0 or (stats["kills_worker"] + stats["kills_server"] < min_kills and time.time() < deadline):
        passes += 1
        for key in stream:
            _deliver(key)
    stop.set()
    for t in threads:
        t.join(timeout=5)
    server.stop()

    outputs = sorted((root / "out").glob("*.fused.jpg"))
    by_input: dict[str, int] = {}
    for path in outputs:
        by_input[path.name.removesuffix(".fused.jpg") + ".jpg"] = by_input.get(path.name.removesuffix(".fused.jpg") + ".jpg", 0) + 1
    complete = [p for p in outputs if cv2.imdecode(np.frombuffer(p.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None]
    result = {
        "events": events, "deliveries_in_stream": len(stream), "http_attempts": stats["deliveries"],
        "acknowledged": len(acknowledged), "kills_worker": stats["kills_worker"], "kills_server": stats["kills_server"],
        "lost": len([k for k in acknowledged if k not in by_input]),
        "duplicated": sum(max(n - 1, 0) for n in by_input.values()) + len([p for p in outputs if p.name.split(".fused")[0] + ".jpg" not in etags]),
        "partial": (len(outputs) - len(complete)) + stats["partial_reads"],
        "reads_checked": stats["reads"],
        "orphaned_temp_files": len(list((root / "out").rglob("*.partial"))) if (root / "out").exists() else 0,
    }
    if not quiet:
        print(table(list(result), [list(result.values())]))
        print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--duplicates", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=180)
    args = parser.parse_args()
    result = run(args.events, args.duplicates, args.seconds)
    bad = result["lost"] + result["duplicated"] + result["partial"] + (result["events"] - result["acknowledged"])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
