"""HTTP checks against the running container, called by tests/container/run.sh.

    python tests/container/checks.py --url URL --container NAME --data DIR --images DIR

DIR (--data) is the host folder mounted at /data in the container (in/ readable, out/ writable); the
container runs with INPUT_URI_TEMPLATE=file:///data/in/{name}, OUTPUT_URI=file:///data/out/{stem}.jpg
and SOURCE_FACE_URI=file:///data/in/source.jpg. The drain check stops the container: it runs last.
Exit status 0 when every check passed; each check prints one line with its timing.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests
from PIL import Image

TIMEOUT = 120


def log(msg: str) -> None:
    print(f"[checks] {msg}", flush=True)


def running(container: str) -> bool:
    out = subprocess.run(["podman", "inspect", "--format", "{{.State.Running}}", container],
                         capture_output=True, text=True)
    return out.stdout.strip() == "true"


def check_ready(url: str, container: str, timeout: float) -> None:
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout:
        if not running(container):
            raise AssertionError(f"the container exited before /readyz turned 200 (last: {last})")
        try:
            r = requests.get(url + "/readyz", timeout=2)
            last = f"{r.status_code} {r.text[:200]}"
            if r.status_code == 200:
                body = r.json()
                assert body["status"] == "ready", body
                health = requests.get(url + "/healthz", timeout=5)
                assert health.status_code == 200, f"/healthz answered {health.status_code}"
                log(f"readyz 200 after {time.monotonic() - start:.1f} s: {r.text.strip()}")
                return
            if r.status_code == 503 and r.json().get("status") == "failed":
                raise AssertionError(f"/readyz says the models failed to load: {r.text}")
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.25)
    raise AssertionError(f"/readyz not 200 within {timeout} s (last: {last})")


def check_multipart(url: str, images: Path) -> None:
    source, target = images / "obama.jpg", images / "biden.jpg"
    start = time.monotonic()
    r = requests.post(url + "/", files={"source": source.read_bytes(), "target": target.read_bytes()},
                      timeout=TIMEOUT)
    assert r.status_code == 200, f"multipart fusion answered {r.status_code}: {r.text[:500]}"
    assert r.headers["Content-Type"].startswith("image/jpeg"), r.headers
    swapped = int(r.headers["X-Faces-Swapped"])
    assert swapped >= 1, f"X-Faces-Swapped is {swapped}"
    out = Image.open(io.BytesIO(r.content))
    out.load()
    assert out.format == "JPEG" and out.size == Image.open(target).size, (out.format, out.size)
    log(f"multipart fusion 200 image/jpeg {out.size[0]}x{out.size[1]}, X-Faces-Swapped {swapped}, "
        f"{time.monotonic() - start:.2f} s, Server-Timing: {r.headers.get('Server-Timing')}")


def gcs_event(name: str, generation: str) -> tuple[dict, bytes]:
    headers = {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()),
               "ce-type": "google.cloud.storage.object.v1.finalized",
               "ce-source": "//storage.googleapis.com/projects/_/buckets/in",
               "ce-subject": f"objects/{name}", "ce-time": "2026-01-01T00:00:00Z",
               "Content-Type": "application/json"}
    data = {"bucket": "in", "name": name, "generation": generation, "contentType": "image/jpeg"}
    return headers, json.dumps(data).encode()



def assert_written(out: Path, r: requests.Response, size: tuple[int, int]) -> Path:
    """The fused output an event wrote: a whole JPEG at the target's size."""
    assert out.is_file(), f"{out} was not written (answer {r.status_code} {r.text[:300]})"
    with Image.open(out) as im:
        im.load()
        assert im.format == "JPEG" and im.size == size, (im.format, im.size)
    return out


def check_storage_event(url: str, data: Path, images: Path) -> None:
    """A GCS finalize CloudEvent (binary mode) and a MinIO Records notification, each for an object
    put in /data/in: the fused image appears in /data/out; a redelivery is answered 202 and not redone."""
    shutil.copyfile(images / "obama.jpg", data / "in" / "source.jpg")
    for name in ("gcs-target.jpg", "minio-target.jpg"):
        shutil.copyfile(images / "biden.jpg", data / "in" / name)
    size = Image.open(images / "biden.jpg").size

    start = time.monotonic()
    headers, body = gcs_event("gcs-target.jpg", "1700000000000001")
    r = requests.post(url + "/", headers=headers, data=body, timeout=TIMEOUT)
    assert 200 <= r.status_code < 300, f"GCS event answered {r.status_code}: {r.text[:500]}"
    out = assert_written(data / "out" / "gcs-target.jpg", r, size)
    log(f"GCS CloudEvent {r.status_code} (ce-type {r.headers.get('ce-type', '-')}), wrote {out.name} "
        f"{size[0]}x{size[1]}, {time.monotonic() - start:.2f} s")

    mtime = out.stat().st_mtime_ns
    headers["ce-id"] = str(uuid.uuid4())
    again = requests.post(url + "/", headers=headers, data=body, timeout=TIMEOUT)
    assert again.status_code == 202, f"redelivery answered {again.status_code}: {again.text[:300]}"
    assert out.stat().st_mtime_ns == mtime, "the redelivery wrote the output again"
    log("GCS redelivery 202, output untouched (idempotent)")

    start = time.monotonic()
    minio = {"EventName": "s3:ObjectCreated:Put", "Key": "in/minio-target.jpg", "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": "in"},
               "object": {"key": "minio-target.jpg", "size": (data / "in" / "minio-target.jpg").stat().st_size,
                          "sequencer": "17A0000000000001"}}}]}
    r = requests.post(url + "/", json=minio, timeout=TIMEOUT)
    assert 200 <= r.status_code < 300, f"MinIO notification answered {r.status_code}: {r.text[:500]}"
    out = assert_written(data / "out" / "minio-target.jpg", r, size)
    log(f"MinIO notification {r.status_code}, wrote {out.name}, {time.monotonic() - start:.2f} s")
    leftovers = [p.name for p in (data / "out").rglob("*") if p.is_file() and "partial" in p.name]
    assert not leftovers, f"temporary files left in /data/out: {leftovers}"


def slow_target(images: Path) -> bytes:
    """The 1927 Solvay photograph (29 faces) at twice its size, as JPEG: with faces=all and a PNG answer
    the fusion takes seconds, long enough to send SIGTERM while it runs."""
    with Image.open(images / "solvay_conference_1927.png") as im:
        big = im.convert("RGB").resize((im.width * 2, im.height * 2), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def inflight(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("facefusion_inflight_fusions "):
            return float(line.split()[1])
    return 0.0


def start_slow_fusion(url: str, images: Path) -> tuple[threading.Thread, dict, dict]:
    """A fusion of seconds (Solvay at twice its size, faces=all, a PNG answer) posted to `url` (no trailing
    slash) on a thread of its own; returns once it shows in facefusion_inflight_fusions, so a signal sent
    then meets it in flight (a fixed sleep was as long as the whole fusion on a faster machine): the
    thread, the result ("r" or "error", then "done": when it ended) and the files it sent."""
    files = {"source": (images / "obama.jpg").read_bytes(), "target": slow_target(images)}
    result: dict = {}

    def post() -> None:
        try:
            result["r"] = requests.post(url + "/", files=files, data={"faces": "all", "format": "png"},
                                        timeout=TIMEOUT)
        except requests.RequestException as exc:
            result["error"] = exc
        result["done"] = time.monotonic()

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while inflight(url) < 1:
        assert "done" not in result, f"the slow fusion finished before it was seen in flight: {result}"
        assert time.monotonic() < deadline, "the slow fusion never showed in facefusion_inflight_fusions"
        time.sleep(0.02)
    return worker, result, files


def check_drain(url: str, container: str, images: Path, exit_timeout: float) -> None:
    worker, result, files = start_slow_fusion(url, images)
    killed = time.monotonic()
    subprocess.run(["podman", "kill", "--signal", "TERM", container], check=True, capture_output=True)
    time.sleep(0.3)
    ready = requests.get(url + "/readyz", timeout=5)
    refused = requests.post(url + "/", files={"source": files["source"], "target": files["source"]}, timeout=30)
    worker.join(timeout=TIMEOUT)
    assert "error" not in result, f"the in-flight fusion failed: {result['error']!r}"
    r = result["r"]
    assert result["done"] > killed, "the slow fusion finished before SIGTERM: nothing was drained"
    assert r.status_code == 200, f"the in-flight fusion answered {r.status_code}: {r.text[:300]}"
    assert int(r.headers["X-Faces-Swapped"]) >= 1, r.headers
    assert ready.status_code == 503, f"/readyz answered {ready.status_code} while draining"
    assert refused.status_code == 503 and refused.headers.get("Retry-After"), \
        f"new work answered {refused.status_code} while draining"
    log(f"SIGTERM during a fusion: it completed 200 ({r.headers['X-Faces-Swapped']} faces) "
        f"{result['done'] - killed:.2f} s after the signal; /readyz 503 and new work 503 "
        f"Retry-After {refused.headers['Retry-After']} meanwhile")
    try:
        waited = subprocess.run(["podman", "wait", container], capture_output=True, text=True,
                                timeout=exit_timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the container did not exit within {exit_timeout} s of SIGTERM") from None
    code = waited.stdout.strip()
    assert waited.returncode == 0 and code == "0", f"the container exited with {code!r} {waited.stderr}"
    log(f"container exited by itself with status 0, {time.monotonic() - killed:.1f} s after SIGTERM")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--container", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--ready-timeout", type=float, default=180)
    ap.add_argument("--exit-timeout", type=float, default=30)
    args = ap.parse_args()
    steps = [("readyz", lambda: check_ready(args.url, args.container, args.ready_timeout)),
             ("multipart", lambda: check_multipart(args.url, args.images)),
             ("storage event", lambda: check_storage_event(args.url, args.data, args.images)),
             ("sigterm drain", lambda: check_drain(args.url, args.container, args.images, args.exit_timeout))]
    for name, step in steps:
        start = time.monotonic()
        try:
            step()
        except (AssertionError, KeyError, ValueError, OSError, requests.RequestException) as exc:
            log(f"FAILED {name} after {time.monotonic() - start:.1f} s: {type(exc).__name__}: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
