"""The fan-out's races and failures, on the real code and real stores: the last parts finishing at the
same moment in several threads or processes stitch exactly once; a worker killed mid-segment leaves no
part visible and the redelivery completes it; without K_SINK a process killed mid-job loses nothing,
and the next one resumes the job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from function.events import FUSION_REQUESTED, SEGMENT_REQUESTED

from .conftest import REPO, shared_file
from .server import FunctionServer
from .video_clips import make_clip, stream_info
from .video_sink import RecordingSink


def deliver(url: str, event: CloudEvent, timeout: float = 120) -> requests.Response:
    headers, body = to_binary(event)
    return requests.post(url + "/", headers=headers, data=body, timeout=timeout)


def request_event(store: str, name: str, event_id: str) -> CloudEvent:
    return CloudEvent({"type": FUSION_REQUESTED, "source": "/tests", "id": event_id},
                      {"source": f"{store}/faces/obama.jpg", "target": f"{store}/in/{name}.mp4",
                       "output": f"{store}/out/{name}.mp4"})


def env_for(model_root: Path, root: Path, **extra: str) -> dict[str, str]:
    return {"MODEL_PATH": str(model_root), "CACHE_PATH": str(root / "cache"), "OUTPUT_URI": f"file://{root}/out/{{stem}}.jpg",
            "ALLOWED_URI_PREFIXES": f"file://{root}/", "VIDEO_SEGMENT_SECONDS": "1", "DRAIN_SECONDS": "0", **extra}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    for folder in ("faces", "in", "out"):
        (tmp_path / folder).mkdir()
    (tmp_path / "faces" / "obama.jpg").write_bytes(shared_file("images", "obama.jpg").read_bytes())
    make_clip(tmp_path / "in" / "clip.mp4", seconds=3.0)
    return tmp_path


# -- exactly one stitch ---------------------------------------------------------------------------------
def _planned_job_with_all_parts(monkeypatch, model_root, root_uri: str, tmp_path: Path):
    """A job whose every part is fused and recorded (the real code: start_job and _fuse_part), not stitched."""
    from function import fanout
    from function.runtime import Runtime

    for key, value in {"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "cache"),
                       "OUTPUT_URI": f"{root_uri}/out/{{stem}}.jpg", "ALLOWED_URI_PREFIXES": f"{root_uri}/",
                       "VIDEO_SEGMENT_SECONDS": "1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("K_SINK", "VIDEO_JOBS_URI"):
        monkeypatch.delenv(key, raising=False)
    rt = Runtime.from_env()
    rt.warmup.ensure_started()
    rt.warmup.wait(60)
    monkeypatch.setattr("function.video_runner.RUNNER.submit", lambda rt, job_id: None)  # no local runner here
    fanout.start_job(rt, identity=f"{root_uri}/in/clip.mp4#race", target_uri=f"{root_uri}/in/clip.mp4",
                     source_uri=f"{root_uri}/faces/obama.jpg", output_uri=f"{root_uri}/out/clip.mp4", raw_options={},
                     event_id="race")
    jobs = fanout.store(rt)
    job = jobs.job(fanout.job_id_for(f"{root_uri}/in/clip.mp4#race"))
    for seg in job["segments"]:
        fanout._fuse_part(rt, jobs, job, seg["index"], jobs.part_uri(job["id"], seg["index"]))
    return rt, jobs, job


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_last_parts_finishing_at_once_stitch_exactly_once(monkeypatch, model_root, tmp_path, scheme):
    from function import fanout

    if scheme == "memory":
        root_uri = f"memory://race-{os.getpid()}"
        fs = fsspec.filesystem("memory")
        fs.pipe(f"/race-{os.getpid()}/faces/obama.jpg", shared_file("images", "obama.jpg").read_bytes())
        fs.pipe(f"/race-{os.getpid()}/in/clip.mp4", make_clip(tmp_path / "clip.mp4", seconds=3.0).read_bytes())
    else:
        for folder in ("faces", "in", "out"):
            (tmp_path / folder).mkdir()
        (tmp_path / "faces" / "obama.jpg").write_bytes(shared_file("images", "obama.jpg").read_bytes())
        make_clip(tmp_path / "in" / "clip.mp4", seconds=3.0)
        root_uri = f"file://{tmp_path}"
    rt, jobs, job = _planned_job_with_all_parts(monkeypatch, model_root, root_uri, tmp_path)
    calls = []
    real_stitch = fanout.stitch

    def counting_stitch(*args, **kwargs):  # the real stitch, counted
        calls.append(threading.get_ident())
        return real_stitch(*args, **kwargs)

    monkeypatch.setattr(fanout, "stitch", counting_stitch)
    barrier = threading.Barrier(6)
    results: list[str] = []

    def last_part_done() -> None:
        barrier.wait()
        results.append(fanout.finish(rt, jobs, job))

    threads = [threading.Thread(target=last_part_done) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and results.count("stitched") == 1, results
    assert set(results) <= {"stitched", "claimed", "done"}
    assert fanout.finish(rt, jobs, job) == "done" and len(calls) == 1  # a late delivery stitches nothing
    assert jobs.status(job["id"])["state"] == "done"


_FINISH_IN_A_PROCESS = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from function import fanout
from function.runtime import Runtime
rt = Runtime.from_env()
jobs = fanout.store(rt)
job = jobs.job({job_id!r})
calls = []
real = fanout.stitch
fanout.stitch = lambda *a, **k: calls.append(1) or real(*a, **k)
time.sleep(max(0.0, {start} - time.time()))
print(json.dumps({{"result": fanout.finish(rt, jobs, job), "stitches": len(calls)}}))
"""


def test_two_processes_finishing_the_last_parts_stitch_once(monkeypatch, model_root, store):
    rt, jobs, job = _planned_job_with_all_parts(monkeypatch, model_root, f"file://{store}", store)
    start = time.time() + 3.0  # both processes imported and waiting by then
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _FINISH_IN_A_PROCESS.format(repo=str(REPO), job_id=job["id"],
                                                                                 start=start)],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(o["stitches"] for o in outcomes) == 1, outcomes
    results = sorted(o["result"] for o in outcomes)
    assert results.count("stitched") == 1 and set(results) <= {"stitched", "claimed", "done"}, results
    assert stream_info(store / "out" / "clip.mp4")["frames"] == 30


# -- killed workers -------------------------------------------------------------------------------------
def _kill(server: FunctionServer) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()


def test_a_worker_killed_mid_segment_leaves_no_part_and_the_redelivery_completes_it(model_root, store):
    sink = RecordingSink()
    env = env_for(model_root, store, K_SINK=sink.url)
    server = FunctionServer(env)
    try:
        r = deliver(server.url, request_event(f"file://{store}", "clip", "killed-1"))
        assert r.status_code == 202
        job_id = r.headers["Location"].rsplit("/", 1)[-1]
        segments = sorted(sink.of_type(SEGMENT_REQUESTED), key=lambda e: e.data["segment"])
        folder = store / "out" / ".facefusion-jobs" / job_id
        threading.Thread(target=lambda: _quiet(deliver, server.url, segments[0]), daemon=True).start()
        deadline = time.time() + 30
        while not (folder / "part-0000.mp4.facefusion.lease").exists() and time.time() < deadline:
            time.sleep(0.01)
        assert (folder / "part-0000.mp4.facefusion.lease").exists(), "the segment never took its lease"
        time.sleep(0.05)  # inside the fusion: a segment takes ten detector runs, 0.3 s was as long as one
        _kill(server)
        assert (folder / "part-0000.mp4.facefusion.lease").exists()  # the killed worker's lease is left behind
        assert not (folder / "part-0000.mp4").exists() and not (folder / "part-0000.json").exists()
        server = FunctionServer(env)  # the pod is replaced; Eventing redelivers
        for event in [segments[0], *segments[1:], segments[0]]:
            assert deliver(server.url, event).status_code == 202
        status = requests.get(f"{server.url}/jobs/{job_id}", timeout=10).json()
        assert status["state"] == "done" and status["segments"]["done"] == status["segments"]["total"] == len(segments)
        info = stream_info(store / "out" / "clip.mp4")
        assert info["frames"] == 30 and info["audio"]
    finally:
        server.stop()
        sink.stop()


def _quiet(fn, *args) -> None:
    with contextlib.suppress(requests.RequestException):  # the server is killed under it
        fn(*args)


def test_without_k_sink_a_process_killed_mid_job_is_resumed_by_the_next(model_root, store):
    env = env_for(model_root, store)
    server = FunctionServer(env)
    try:
        r = deliver(server.url, request_event(f"file://{store}", "clip", "local-1"), timeout=60)
        assert r.status_code == 202  # answered before any segment is fused
        job_id = r.headers["Location"].rsplit("/", 1)[-1]
        folder = store / "out" / ".facefusion-jobs" / job_id
        deadline = time.time() + 60
        while not (folder / "part-0000.json").exists() and time.time() < deadline:
            time.sleep(0.02)
        _kill(server)
        done_before = len(list(folder.glob("part-*.json")))
        total = len(json.loads((folder.parent / f"{job_id}.json").read_text())["segments"])
        assert 1 <= done_before < total and not (store / "out" / "clip.mp4").exists()
        server = FunctionServer(env)  # resumes unfinished jobs once ready
        deadline = time.time() + 90
        status = {}
        while time.time() < deadline:
            status = requests.get(f"{server.url}/jobs/{job_id}", timeout=10).json()
            if status["state"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert status["state"] == "done", status
        assert status["frames"] == {"done": 30, "total": 30}
        assert stream_info(store / "out" / "clip.mp4")["frames"] == 30
    finally:
        server.stop()


def test_a_dead_stitchers_claim_expires_and_the_next_delivery_finishes(monkeypatch, model_root, tmp_path):
    """A stitch claim held by a live delivery elsewhere: the job says `stitching` and nobody else stitches;
    once that claim has expired (its holder died), the next delivery takes it over and finishes the job."""
    from function import fanout, leases

    root = f"memory://stale-{os.getpid()}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/stale-{os.getpid()}/faces/obama.jpg", shared_file("images", "obama.jpg").read_bytes())
    fs.pipe(f"/stale-{os.getpid()}/in/clip.mp4", make_clip(tmp_path / "clip.mp4", seconds=2.0).read_bytes())
    rt, jobs, job = _planned_job_with_all_parts(monkeypatch, model_root, root, tmp_path)
    claim_uri = jobs.stitch_uri(job["id"]) + leases.LEASE_SUFFIX
    held = {"owner": "other-pod.1.x", "host": "other-pod", "pid": 1, "claimed_at": time.time(),
            "expires_at": time.time() + 600}
    fs.pipe(claim_uri.removeprefix("memory://"), json.dumps(held).encode())
    assert fanout.finish(rt, jobs, job) == "claimed"
    assert jobs.status(job["id"])["state"] == "stitching"
    assert not fs.exists(f"/stale-{os.getpid()}/out/clip.mp4")
    fs.pipe(claim_uri.removeprefix("memory://"), json.dumps({**held, "expires_at": time.time() - 1}).encode())
    assert fanout.finish(rt, jobs, job) == "stitched"
    assert jobs.status(job["id"])["state"] == "done"
    local = tmp_path / "out.mp4"
    local.write_bytes(fs.cat(f"/stale-{os.getpid()}/out/clip.mp4"))
    assert stream_info(local)["frames"] == 20


def test_without_k_sink_a_job_waits_for_a_fusion_slot_instead_of_failing(model_root, tmp_path):
    from .inprocess import InProcessServer

    fs = fsspec.filesystem("memory")
    base = f"/busy-{os.getpid()}"
    fs.pipe(f"{base}/faces/obama.jpg", shared_file("images", "obama.jpg").read_bytes())
    fs.pipe(f"{base}/in/clip.mp4", make_clip(tmp_path / "clip.mp4", seconds=2.0).read_bytes())
    srv = InProcessServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"), "MAX_INFLIGHT": "1",
                           "OUTPUT_URI": f"memory:/{base}/out/{{stem}}.jpg", "ALLOWED_URI_PREFIXES": "memory://",
                           "VIDEO_SEGMENT_SECONDS": "1"})
    try:
        runtime = srv.module.RUNTIME
        with runtime.limiter.slot():  # a direct fusion holds the only slot
            r = deliver(srv.url, request_event(f"memory:/{base}", "clip", "busy-1"))
            assert r.status_code == 202
            job_id = r.headers["Location"].rsplit("/", 1)[-1]
            time.sleep(5)  # longer than 5 retries of a transient failure would take
            status = requests.get(f"{srv.url}/jobs/{job_id}", timeout=10).json()
            assert status["state"] == "planned", status  # waiting, not failed
        deadline = time.time() + 60
        while time.time() < deadline and status["state"] != "done":
            time.sleep(0.2)
            status = requests.get(f"{srv.url}/jobs/{job_id}", timeout=10).json()
        assert status["state"] == "done" and status["frames"]["done"] == status["frames"]["total"] == 20
    finally:
        srv.stop()
