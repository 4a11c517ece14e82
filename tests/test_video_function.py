"""The video function over real HTTP on loopback: each way in, the fan-out through K_SINK with segment
events sent by the CloudEvents SDK (in any order, duplicated), GET /jobs/<id>, dead letters, bad input.

Clips are made with PyAV in tmp_path (tests/video_clips.py): a few seconds at 10 frames/s, 320x240,
a keyframe every 5 frames, so VIDEO_SEGMENT_SECONDS=1 cuts them into several segments."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from function.events import FUSION_COMPLETED, FUSION_REQUESTED, SEGMENT_REQUESTED

from .conftest import shared_file
from .inprocess import InProcessServer
from .video_clips import audio_only, decoded_frames, make_clip, stream_info
from .video_sink import RecordingSink


@pytest.fixture(scope="module")
def sink():
    recorder = RecordingSink()
    yield recorder
    recorder.stop()


@pytest.fixture(scope="module")
def server(model_root, tmp_path_factory, sink):
    fs = fsspec.filesystem("memory")
    fs.pipe("/vfaces/obama.jpg", shared_file("images", "obama.jpg").read_bytes())
    srv = InProcessServer({
        "MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path_factory.mktemp("video-cache")),
        "SOURCE_FACE_URI": "memory://vfaces/obama.jpg", "INPUT_URI_TEMPLATE": "memory://vin/{bucket}/{name}",
        "OUTPUT_URI": "memory://vout/{stem}.jpg", "ALLOWED_URI_PREFIXES": "memory://",
        "VIDEO_SEGMENT_SECONDS": "1", "VIDEO_MAX_SYNC_SECONDS": "2.5", "VIDEO_MAX_SECONDS": "6",
        "K_SINK": sink.url, "SINK_RETRIES": "2", "K_REVISION": "video-1",
        "K_CE_OVERRIDES": json.dumps({"extensions": {"cluster": "test-east"}})})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clip3(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "three.mp4", seconds=3.0)


@pytest.fixture(scope="module")
def clip2(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "two.mp4", seconds=2.0)


def mem() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("memory")


def put(path: str, data: bytes) -> str:
    mem().pipe(path, data)
    return "memory://" + path.lstrip("/")


def binary(ce_type: str, data: dict, event_id: str, **extensions) -> tuple[dict, bytes]:
    return to_binary(CloudEvent({"type": ce_type, "source": "/tests/video", "id": event_id, **extensions}, data))


def deliver(server, event: CloudEvent, path: str = "/") -> requests.Response:
    headers, body = to_binary(event)
    return requests.post(server.url + path, headers=headers, data=body, timeout=120)


def job_status(server, job_id: str) -> dict:
    r = requests.get(f"{server.url}/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def fused_differs(original: Path, fused: Path) -> bool:
    a, b = decoded_frames(original), decoded_frames(fused)
    return len(a) == len(b) and all(np.abs(x.astype(int) - y.astype(int)).max() > 40 for x, y in zip(a, b, strict=True))


def problem(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["Content-Type"].startswith("application/problem+json")
    return r.json()


# -- direct HTTP -----------------------------------------------------------------------------------------
def test_multipart_video_target_answers_with_the_fused_clip(server, clip2, tmp_path):
    r = requests.post(server.url + "/", timeout=120, files={
        "source": ("obama.jpg", shared_file("images", "obama.jpg").read_bytes(), "image/jpeg"),
        # an octet-stream part: recognised by its bytes (an MP4 box), not its declared type
        "target": ("clip.bin", clip2.read_bytes(), "application/octet-stream")}, data={"crf": "20"})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"] == "video/mp4"
    out = tmp_path / "fused.mp4"
    out.write_bytes(r.content)
    info, original = stream_info(out), stream_info(clip2)
    assert info["frames"] == original["frames"] == int(r.headers["X-Frames"]) and info["audio"]
    assert info["fps"] == original["fps"] and abs(info["duration"] - original["duration"]) < 0.15
    assert int(r.headers["X-Frames-Swapped"]) == info["frames"]
    assert fused_differs(clip2, out)


def test_image_options_on_a_clip_and_video_options_on_an_image_are_refused_by_name(server, clip2):
    """format and quality do not apply to a video (its encoder takes crf, preset, codec), nor crf to an
    image: a 400 naming the option and where it applies, rather than a silently ignored option."""
    obama = ("obama.jpg", shared_file("images", "obama.jpg").read_bytes(), "image/jpeg")
    clip = ("clip.mp4", clip2.read_bytes(), "video/mp4")
    for target, fields, needle in ((clip, {"format": "png"}, "format applies to image targets only"),
                                   (clip, {"quality": "10"}, "quality applies to image targets only"),
                                   (obama, {"crf": "20"}, "crf applies to video targets only")):
        r = requests.post(server.url + "/", timeout=60, files={"source": obama, "target": target}, data=fields)
        assert needle in problem(r, 400)["detail"], (fields, r.text[:300])


def test_json_with_uris_writes_the_clip_and_reports(server, clip2):
    target = put("/vin/direct/two.mp4", clip2.read_bytes())
    r = requests.post(server.url + "/", timeout=120, json={
        "source": "memory://vfaces/obama.jpg", "target": target, "output": "memory://vout/direct/two-fused.mkv"})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["output"] == "memory://vout/direct/two-fused.mkv" and body["media_type"] == "video/x-matroska"
    assert body["frames"] == stream_info(clip2)["frames"]
    assert mem().cat("/vout/direct/two-fused.mkv")[:4] == b"\x1a\x45\xdf\xa3"  # Matroska, by the extension


def test_a_clip_over_the_sync_limit_is_413_naming_the_fan_out(server, clip3):
    target = put("/vin/direct/three.mp4", clip3.read_bytes())
    r = requests.post(server.url + "/", timeout=120, json={
        "source": "memory://vfaces/obama.jpg", "target": target, "output": "memory://vout/direct/three-fused.mp4"})
    body = problem(r, 413)
    assert "VIDEO_MAX_SYNC_SECONDS" in body["detail"] and FUSION_REQUESTED in body["detail"]
    assert not mem().exists("/vout/direct/three-fused.mp4")


@pytest.mark.parametrize("case, status, code", [
    ("image-as-video", 415, "not-a-video"), ("audio-only", 422, "no-video-stream"), ("vfr", 422, "variable-frame-rate"),
    ("too-long", 413, "video-too-long"), ("bad-crf", 400, "invalid-options"),
    # what only the model set can tell is checked before the 202 too, not left to fail every segment
    ("unknown-swapper", 400, "invalid-options"), ("unknown-enhancer", 400, "invalid-options"),
    ("crf-over-x264", 400, "unsupported-video-output"), ("faceless-source", 422, "no-source-face")])
def test_bad_video_input_is_a_clear_4xx_and_writes_nothing(server, sink, tmp_path, case, status, code):
    if case == "image-as-video":
        data = shared_file("images", "obama.jpg").read_bytes()
    elif case == "audio-only":
        data = audio_only(tmp_path / "a.mp4").read_bytes()
    else:
        data = make_clip(tmp_path / "c.mp4", seconds=7.0 if case == "too-long" else 1.0, vfr=case == "vfr",
                         size=(64, 48), fps=5).read_bytes()
    target = put(f"/vin/bad/{case}.mp4", data)
    before = set(mem().find("/vout"))
    options = {"bad-crf": {"crf": 99}, "unknown-swapper": {"swapper": "nosuch"}, "crf-over-x264": {"crf": 60},
               "unknown-enhancer": {"enhance": True, "enhancer": "nosuch"}}.get(case, {})
    source = "memory://vfaces/obama.jpg"
    if case == "faceless-source":
        source = put("/vfaces/grey.png", cv2.imencode(".png", np.full((240, 320, 3), 128, np.uint8))[1].tobytes())
    sent = len(sink.of_type(SEGMENT_REQUESTED))
    event = CloudEvent({"type": FUSION_REQUESTED, "source": "/tests", "id": f"bad-{case}"},
                       {"source": source, "target": target, "output": f"memory://vout/bad/{case}.mp4",
                        "options": options})
    body = problem(deliver(server, event), status)
    assert body["type"].endswith(code), body
    assert len(sink.of_type(SEGMENT_REQUESTED)) == sent  # no segment handed out
    assert set(mem().find("/vout")) == before  # no job document, no part, no output


# -- the fan-out --------------------------------------------------------------------------------------------
def _request_job(server, sink, clip: Path, name: str, event_id: str) -> tuple[str, list[CloudEvent]]:
    target = put(f"/vin/fan/{name}.mp4", clip.read_bytes())
    event = CloudEvent({"type": FUSION_REQUESTED, "source": "/tests", "id": event_id},
                       {"source": "memory://vfaces/obama.jpg", "target": target, "output": f"memory://vout/fan/{name}.mp4"})
    r = deliver(server, event)
    assert r.status_code == 202 and not r.content, r.text[:300]
    job_id = r.headers["Location"].rsplit("/", 1)[-1]
    segments = [e for e in sink.of_type(SEGMENT_REQUESTED) if e.data["job"] == job_id]
    return job_id, segments


def test_fusion_requested_fans_out_and_any_order_of_segments_finishes_once(server, sink, clip3):
    job_id, segments = _request_job(server, sink, clip3, "ordered", "fan-1")
    segments.sort(key=lambda e: e.data["segment"])
    count = len(segments)
    assert count >= 3 and [e.data["segment"] for e in segments] == list(range(count))
    assert all(e["cluster"] == "test-east" for e in segments)  # the SinkBinding's K_CE_OVERRIDES
    status = job_status(server, job_id)
    assert status["state"] == "planned" and status["segments"] == {"done": 0, "total": count}
    assert status["frames"] == {"done": 0, "total": 30} and status["output"] == "memory://vout/fan/ordered.mp4"

    order = [segments[-1], segments[1], segments[1], *segments[2:-1]]  # reordered, one duplicated, the first last
    for event in order:
        assert deliver(server, event).status_code == 202
    status = job_status(server, job_id)
    assert status["state"] == "running" and status["segments"] == {"done": count - 1, "total": count}
    assert not mem().exists("/vout/fan/ordered.mp4")
    assert deliver(server, segments[0]).status_code == 202  # the last part: this delivery stitches
    status = job_status(server, job_id)
    assert status["state"] == "done" and status["frames"] == {"done": 30, "total": 30} and status["frames_per_second"] > 0
    data = mem().cat("/vout/fan/ordered.mp4")
    local = clip3.parent / "ordered-out.mp4"
    local.write_bytes(data)
    info = stream_info(local)
    assert info["frames"] == 30 and info["audio"] and abs(info["duration"] - stream_info(clip3)["duration"]) < 0.15
    assert fused_differs(clip3, local)
    completed = [e for e in sink.of_type(FUSION_COMPLETED) if e.data["job"] == job_id]
    assert len(completed) == 1 and completed[0]["subject"] == "memory://vout/fan/ordered.mp4"
    for event in segments:  # redelivered after the job is done: nothing changes
        assert deliver(server, event).status_code == 202
    assert mem().cat("/vout/fan/ordered.mp4") == data
    assert len([e for e in sink.of_type(FUSION_COMPLETED) if e.data["job"] == job_id]) == 1
    # the request event redelivered: the same job, a duplicate
    again = deliver(server, CloudEvent({"type": FUSION_REQUESTED, "source": "/tests", "id": "fan-1"}, {
        "source": "memory://vfaces/obama.jpg", "target": "memory://vin/fan/ordered.mp4",
        "output": "memory://vout/fan/ordered.mp4"}))
    assert again.status_code == 202 and again.headers["Location"] == f"/jobs/{job_id}"


def test_dead_lettered_segment_fails_the_job_naming_segment_and_reason(server, sink, clip3):
    job_id, segments = _request_job(server, sink, clip3, "dead", "fan-dead")
    assert deliver(server, segments[0]).status_code == 202
    reason = json.dumps({"type": "https://facefusion.dev/problems/runtime-failure", "status": 503,
                         "detail": "GPU out of memory"}).encode()
    for seg, data in ((segments[0], b"late"), (segments[2], reason)):  # a dead letter of a done segment changes nothing
        dead = CloudEvent({**seg.get_attributes(), "knativeerrorcode": "503",
                           "knativeerrordata": base64.b64encode(data).decode(),
                           "knativeerrordest": "http://facefusion.facefusion.svc.cluster.local"}, seg.data)
        assert deliver(server, dead, "/dead-letter").status_code == 202
    status = job_status(server, job_id)
    assert status["state"] == "failed"
    assert status["error"]["segment"] == 2 and status["error"]["status"] == 503
    assert status["error"]["reason"] == "GPU out of memory"
    assert deliver(server, segments[1]).status_code == 202  # a failed job fuses nothing more
    assert job_status(server, job_id)["segments"]["done"] == 1


def test_a_webm_fan_out_and_a_clip_overwriting_itself_are_refused_before_any_work(server, sink, clip2):
    """The fan-out's parts are MP4 joined by stream copy, so a .webm output is a 400 at planning (not a
    job failing at its stitch); a direct request may not name its own clip as the output."""
    target = put("/vin/refuse/clip.mp4", clip2.read_bytes())
    sent = len(sink.of_type(SEGMENT_REQUESTED))
    event = CloudEvent({"type": FUSION_REQUESTED, "source": "/tests", "id": "webm-out"},
                       {"source": "memory://vfaces/obama.jpg", "target": target, "output": "memory://vout/refuse/out.webm"})
    body = problem(deliver(server, event), 400)
    assert body["type"].endswith("unsupported-video-output") and "fan-out" in body["detail"]
    assert len(sink.of_type(SEGMENT_REQUESTED)) == sent and not mem().exists("/vout/refuse/out.webm")
    inside = put("/vout/refuse/clip.mp4", clip2.read_bytes())  # where outputs may go, so only the new check stops it
    r = requests.post(server.url + "/", timeout=60, json={"source": "memory://vfaces/obama.jpg", "target": inside,
                                                          "output": inside})
    assert problem(r, 403)["type"].endswith("output-is-input")
    assert mem().cat("/vout/refuse/clip.mp4") == clip2.read_bytes()


def test_a_clip_named_without_an_extension_is_a_video_job_by_its_output(server, sink, clip2):
    """fusion.requested with a target such as s3://bucket/upload-123 (no extension) and a video output
    goes to the fan-out, not the image path (which would call the clip 'not an image')."""
    target = put("/vin/noext/upload-123", clip2.read_bytes())
    event = CloudEvent({"type": FUSION_REQUESTED, "source": "/tests", "id": "noext"},
                       {"source": "memory://vfaces/obama.jpg", "target": target, "output": "memory://vout/noext/out.mp4"})
    r = deliver(server, event)
    assert r.status_code == 202 and r.headers["Location"].startswith("/jobs/"), r.text[:300]


def test_a_dead_letter_replayed_to_the_main_route_is_processed_not_failed_again(server, sink, clip3):
    """Recovering dead letters means sending them again to POST /: the knativeerror* extensions they
    still carry must not fail their job there (only POST /dead-letter reads them as a failure)."""
    job_id, segments = _request_job(server, sink, clip3, "replayed", "fan-replayed")
    replay = CloudEvent({**segments[0].get_attributes(), "knativeerrorcode": "503",
                         "knativeerrordata": base64.b64encode(b"GPU out of memory").decode()}, segments[0].data)
    assert deliver(server, replay).status_code == 202
    status = job_status(server, job_id)
    assert status["state"] == "running" and status["segments"]["done"] == 1 and not status.get("error")


def test_job_status_of_an_unknown_or_malformed_id_is_404(server):
    for job_id in ("0" * 24, "not-an-id", "../../etc"):
        r = requests.get(f"{server.url}/jobs/{job_id}", timeout=10)
        assert r.status_code == 404 and r.headers["Content-Type"].startswith("application/problem+json")


def test_storage_event_for_a_video_object_goes_through_the_fan_out(server, sink, clip2):
    put("/vin/uploads/holiday.mp4", clip2.read_bytes())
    event = CloudEvent({"type": "google.cloud.storage.object.v1.finalized", "source": "//storage.googleapis.com/",
                        "id": "gcs-video-1"},
                       {"bucket": "uploads", "name": "holiday.mp4", "generation": "7", "contentType": "video/mp4"})
    r = deliver(server, event)
    assert r.status_code == 202
    job_id = r.headers["Location"].rsplit("/", 1)[-1]
    segments = [e for e in sink.of_type(SEGMENT_REQUESTED) if e.data["job"] == job_id]
    for seg in segments:
        assert deliver(server, seg).status_code == 202
    status = job_status(server, job_id)
    assert status["state"] == "done" and status["output"] == "memory://vout/holiday.mp4"
    assert mem().exists("/vout/holiday.mp4")
    # a part or job object appearing in the bucket is ours: its event is ignored, never fused
    ours = CloudEvent({"type": "google.cloud.storage.object.v1.finalized", "source": "//storage.googleapis.com/",
                       "id": "gcs-video-2"}, {"bucket": "x", "name": f".facefusion-jobs/{job_id}/part-0000.mp4"})
    assert deliver(server, ours).status_code == 202


def test_sink_that_keeps_failing_makes_the_request_retryable(server, sink, clip2):
    target = put("/vin/fan/sinkdown.mp4", clip2.read_bytes())
    event = CloudEvent({"type": FUSION_REQUESTED, "source": "/tests", "id": "sink-down"}, {
        "source": "memory://vfaces/obama.jpg", "target": target, "output": "memory://vout/fan/sinkdown.mp4"})
    sink.status = 503
    try:
        r = deliver(server, event)
    finally:
        sink.status = 202
    assert problem(r, 503)["type"].endswith("sink-unavailable") and r.headers["Retry-After"]
    r = deliver(server, event)
    assert r.status_code == 202  # Eventing's redelivery hands the segments out again
    job_id = r.headers["Location"].rsplit("/", 1)[-1]
    handed = sorted(e.data["segment"] for e in sink.of_type(SEGMENT_REQUESTED) if e.data["job"] == job_id)
    assert handed == list(range(job_status(server, job_id)["segments"]["total"]))


def test_openapi_documents_the_video_routes_and_answers(server, sink, clip2):
    import jsonschema
    from openapi_spec_validator import validate

    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    validate(spec)
    post = spec["paths"]["/"]["post"]
    assert {"video/mp4", "video/x-matroska", "video/webm", "video/quicktime"} <= set(post["responses"]["200"]["content"])
    assert {"crf", "preset", "codec"} <= set(post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"])
    r = requests.post(server.url + "/", json={"source": "memory://vfaces/obama.jpg", "target": "memory://vin/uploads/holiday.mp4",
                                              "output": "memory://vout/none/x.gif"}, timeout=30)
    assert r.status_code == 400 and ".mp4" in r.json()["detail"]  # a video's output must name a video container
    job_id, segments = _request_job(server, sink, clip2, "openapi", "openapi-1")
    schema = {**spec["components"]["schemas"]["VideoJob"], "components": spec["components"]}
    jsonschema.validate(job_status(server, job_id), schema)  # planned
    for event in segments:
        deliver(server, event)
    jsonschema.validate(job_status(server, job_id), schema)  # done
    assert "/jobs/{id}" in spec["paths"] and "/dead-letter" in spec["paths"]


def test_job_status_and_dead_letters_need_the_token(model_root, tmp_path):
    from .server import FunctionServer

    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"), "AUTH_TOKEN": "video-token",
                          "OUTPUT_URI": "memory://vout/{stem}.jpg"}, wait_ready=False)
    try:
        job = f"{srv.url}/jobs/{'a' * 24}"
        assert problem(requests.get(job, timeout=10), 401)["type"].endswith("unauthorized")
        assert requests.post(srv.url + "/dead-letter", json={}, timeout=10).status_code == 401
        assert problem(requests.get(job, headers={"Authorization": "Bearer video-token"}, timeout=10), 404)
    finally:
        srv.stop()


def test_job_status_without_a_job_store_is_404_not_a_retryable_503(model_root, tmp_path):
    """A service with neither VIDEO_JOBS_URI nor OUTPUT_URI keeps no jobs: asking for one is a 404 that
    says so (a 503 would tell clients to retry what can never succeed)."""
    from .server import FunctionServer

    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c")}, wait_ready=False)
    try:
        body = problem(requests.get(f"{srv.url}/jobs/{'b' * 24}", timeout=10), 404)
        assert body["type"].endswith("job-not-found") and "VIDEO_JOBS_URI" in body["detail"]
    finally:
        srv.stop()


def test_objects_under_every_output_prefix_are_our_own_never_new_work(monkeypatch):
    """A trigger on a bucket that also holds VIDEO_OUTPUT_URI or VIDEO_JOBS_URI must not loop: their
    outputs and parts are our own objects, as those under OUTPUT_URI are."""
    from function import jobs
    from function.runtime import Runtime

    monkeypatch.setenv("OUTPUT_URI", "memory://bucket/images/{stem}.jpg")
    monkeypatch.setenv("VIDEO_OUTPUT_URI", "memory://bucket/clips/{stem}.mp4")
    monkeypatch.setenv("VIDEO_JOBS_URI", "memory://bucket/work/")
    rt = Runtime.from_env()
    for own in ("memory://bucket/images/a.jpg", "memory://bucket/clips/a.mp4", "memory://bucket/work/j/part-0003.mp4"):
        assert jobs._own_output(rt, own), own
    assert not jobs._own_output(rt, "memory://bucket/uploads/a.mp4")
