"""The function over real HTTP: functions-framework + gunicorn on loopback, stand-in models, the real
cloudevents SDK as the client, and file:// storage the server and the test both see."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import shutil
from pathlib import Path

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from PIL import Image

from .conftest import shared_file
from .server import FunctionServer

REVISION = "facefusion-00007"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    (root / "faces").mkdir()
    shutil.copy(shared_file("images", "obama.jpg"), root / "faces" / "obama.jpg")
    return root


@pytest.fixture(scope="module")
def server(model_root, store, tmp_path_factory):
    env = {
        "MODEL_PATH": str(model_root),
        "CACHE_PATH": str(tmp_path_factory.mktemp("fn-cache")),
        "K_REVISION": REVISION,
        "SOURCE_FACE_URI": f"file://{store}/faces/obama.jpg",
        "INPUT_URI_TEMPLATE": f"file://{store}/in/{{provider}}/{{bucket}}/{{name}}",
        "OUTPUT_URI": f"file://{store}/out/{{provider}}/{{bucket}}/{{name}}.fused.jpg",
        "ALLOWED_URI_PREFIXES": f"file://{store}/,memory://",
        "ALLOWED_OUTPUT_PREFIXES": f"file://{store}/out/,file://{store}/direct-out/,file://{store}/req-out/",
        "MAX_INFLIGHT": "2",
    }
    srv = FunctionServer(env)
    yield srv
    srv.stop()


def outputs(store: Path) -> list[Path]:
    return sorted(p for p in (store / "out").rglob("*") if p.is_file() and not p.name.endswith(".facefusion.json"))


def put_input(store: Path, provider: str, bucket: str, name: str, image: str = "two_people.jpg") -> Path:
    path = store / "in" / provider / bucket / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shared_file("images", image), path)
    return path


def fresh_out(store: Path) -> None:
    shutil.rmtree(store / "out", ignore_errors=True)


def multipart(source: str = "obama.jpg", target: str = "two_people.jpg", **fields):
    files = {"source": shared_file("images", source).read_bytes(), "target": shared_file("images", target).read_bytes()}
    return files, fields


def assert_problem(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["type"] and body["title"] and body["detail"]
    return body


# -- direct HTTP -------------------------------------------------------------------------------------
def test_multipart_returns_the_fused_image_with_headers(server):
    files, fields = multipart(faces="all")
    r = requests.post(server.url + "/", files=files, data=fields, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/jpeg" and r.content.startswith(b"\xff\xd8")
    assert r.headers["X-Faces-Swapped"] == "2"
    assert r.headers["X-Model-Version"] == "test"
    assert r.headers["X-Revision"] == REVISION
    stages = {part.split(";")[0].strip() for part in r.headers["Server-Timing"].split(",")}
    assert {"decode", "detect", "embed", "swap", "paste", "encode"} <= stages
    original = Image.open(shared_file("images", "two_people.jpg"))
    assert Image.open(__import__("io").BytesIO(r.content)).size == original.size


@pytest.mark.parametrize("how,expected", [({"headers": {"Accept": "image/png"}}, "image/png"),
                                         ({"data": {"format": "webp"}}, "image/webp")])
def test_output_format_from_accept_or_option(server, how, expected):
    files, _ = multipart()
    r = requests.post(server.url + "/", files=files, timeout=60, **how)
    assert r.status_code == 200 and r.headers["Content-Type"] == expected


def test_json_with_base64_returns_image(server):
    body = {"source": base64.b64encode(shared_file("images", "obama.jpg").read_bytes()).decode(),
            "target": "data:image/jpeg;base64," + base64.b64encode(shared_file("images", "biden.jpg").read_bytes()).decode()}
    r = requests.post(server.url + "/", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/jpeg" and r.headers["X-Faces-Swapped"] == "1"


def test_json_with_uris_and_output_writes_and_reports(server, store):
    target = put_input(store, "direct", "b", "t.jpg", "biden.jpg")
    out = store / "direct-out" / "result.png"
    body = {"source": f"file://{store}/faces/obama.jpg", "target": f"file://{target}", "output": f"file://{out}"}
    r = requests.post(server.url + "/", json=body, timeout=60)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["output"] == f"file://{out}" and report["faces_swapped"] == 1 and report["revision"] == REVISION
    assert Image.open(out).format == "PNG"  # format follows the output's extension
    assert not list(out.parent.rglob("*.partial"))


# -- storage notifications and CloudEvents -----------------------------------------------------------
def _gcs_event() -> dict:
    return json.loads(shared_file("testdata", "storage", "gcs-object-finalized.cloudevent.json").read_text())


def test_gcs_event_structured_and_binary_produce_one_output(server, store):
    fresh_out(store)
    put_input(store, "gcs", "some-bucket", "folder/Test.cs")
    raw = _gcs_event()
    r = requests.post(server.url + "/", data=json.dumps(raw), headers={"Content-Type": "application/cloudevents+json"}, timeout=60)
    assert r.status_code == 200, r.text
    reply = from_http(dict(r.headers), r.content)
    assert reply["type"] == "dev.facefusion.fusion.completed"
    assert reply.data["output"].endswith("/out/gcs/some-bucket/folder/Test.cs.fused.jpg")
    assert reply.data["faces_swapped"] == 1 and reply.data["revision"] == REVISION and reply.data["model_version"] == "test"
    assert [p.relative_to(store).as_posix() for p in outputs(store)] == ["out/gcs/some-bucket/folder/Test.cs.fused.jpg"]
    first_mtime = outputs(store)[0].stat().st_mtime_ns
    # redelivery of the same object version, now in binary mode through the SDK: no second output
    event = CloudEvent({k: v for k, v in raw.items() if k != "data"}, raw["data"])
    headers, body = to_binary(event)
    r = requests.post(server.url + "/", data=body, headers=headers, timeout=60)
    assert r.status_code == 202, r.text
    assert len(outputs(store)) == 1 and outputs(store)[0].stat().st_mtime_ns == first_mtime


def test_s3_notification_and_s3_cloudevent(server, store):
    fresh_out(store)
    put_input(store, "s3", "mybucket", "HappyFace.jpg")
    payload = shared_file("testdata", "storage", "s3-object-created-put.json").read_text()
    r = requests.post(server.url + "/", data=payload, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    assert [o["status"] for o in r.json()["results"]] == ["done"]
    record = json.loads(payload)["Records"][0]
    event = CloudEvent({"type": "com.amazonaws.s3.ObjectCreated:Put", "source": "aws:s3", "subject": "HappyFace.jpg"}, record)
    headers, body = to_structured(event)
    r = requests.post(server.url + "/", data=body, headers=headers, timeout=60)
    assert r.status_code == 202, r.text  # same object version: a duplicate
    assert [p.name for p in outputs(store)] == ["HappyFace.jpg.fused.jpg"]


def test_minio_webhook(server, store):
    fresh_out(store)
    put_input(store, "minio", "images", "myphoto.jpg")
    payload = shared_file("testdata", "storage", "minio-webhook-object-created-put.json").read_text()
    for _ in range(2):
        r = requests.post(server.url + "/", data=payload, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 200, r.text
    assert [o["status"] for o in r.json()["results"]] == ["duplicate"]
    assert [p.relative_to(store / "out").as_posix() for p in outputs(store)] == ["minio/images/myphoto.jpg.fused.jpg"]


def test_azure_event_grid_batch(server, store):
    fresh_out(store)
    put_input(store, "azure", "testcontainer", "new-file.txt")
    payload = shared_file("testdata", "storage", "azure-blob-created.cloudevent.json").read_text()
    r = requests.post(server.url + "/", data=payload, headers={"Content-Type": "application/cloudevents-batch+json"}, timeout=60)
    assert r.status_code == 200, r.text
    assert [o["status"] for o in r.json()["results"]] == ["done"]
    assert [p.relative_to(store / "out").as_posix() for p in outputs(store)] == ["azure/testcontainer/new-file.txt.fused.jpg"]


def test_non_creation_events_are_acknowledged_and_ignored(server, store):
    fresh_out(store)
    raw = _gcs_event()
    raw["type"] = "google.cloud.storage.object.v1.deleted"
    r = requests.post(server.url + "/", data=json.dumps(raw), headers={"Content-Type": "application/cloudevents+json"}, timeout=30)
    assert r.status_code == 202
    minio = json.loads(shared_file("testdata", "storage", "minio-webhook-object-created-put.json").read_text())
    minio["EventName"] = minio["Records"][0]["eventName"] = "s3:ObjectRemoved:Delete"
    r = requests.post(server.url + "/", json=minio, timeout=30)
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "ignored"
    assert outputs(store) == []


def test_own_outputs_are_not_processed(server, store):
    """A trigger on the bucket we write to must not loop: events for our outputs are ignored.

    Here the input bucket `loop` is the output folder itself (a symlink), as when one bucket is both.
    """
    fresh_out(store)
    put_input(store, "gcs", "some-bucket", "folder/Test.cs")
    raw = _gcs_event()
    requests.post(server.url + "/", data=json.dumps(raw), headers={"Content-Type": "application/cloudevents+json"}, timeout=60)
    produced = outputs(store)[0]
    loop = store / "in" / "gcs" / "loop"
    if not loop.exists():
        loop.symlink_to(store / "out", target_is_directory=True)
    for name in (produced.relative_to(store / "out").as_posix(), produced.relative_to(store / "out").as_posix() + ".facefusion.json"):
        event = dict(raw, id=f"loop-{name}", data=dict(raw["data"], bucket="loop", name=name))
        r = requests.post(server.url + "/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"}, timeout=60)
        assert r.status_code == 202, r.text
    assert outputs(store) == [produced]


def test_fusion_requested_event(server, store):
    target = put_input(store, "req", "b", "t.jpg", "biden.jpg")
    out = store / "req-out" / "fused.webp"
    event = CloudEvent({"type": "dev.facefusion.fusion.requested", "source": "/tests"},
                       {"source": f"file://{store}/faces/obama.jpg", "target": f"file://{target}", "output": f"file://{out}",
                        "options": {"faces": "all"}})
    headers, body = to_binary(event)
    r = requests.post(server.url + "/", data=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    reply = from_http(dict(r.headers), r.content)
    assert reply["type"] == "dev.facefusion.fusion.completed" and reply.data["output"] == f"file://{out}"
    assert reply["type"] != event["type"]  # a reply never matches the trigger that feeds us
    assert Image.open(out).format == "WEBP"


def test_batches_are_handled_event_by_event(server):
    batch = shared_file("testdata", "cloudevents", "07_batch_two_events.json").read_text()
    r = requests.post(server.url + "/", data=batch, headers={"Content-Type": "application/cloudevents-batch+json"}, timeout=30)
    assert r.status_code == 200, r.text
    # the spec's first example carries a placeholder, not base64: that entry alone fails, as a 400 would
    results = r.json()["results"]
    assert [(o["id"], o["status"]) for o in results] == [("B234-1234-1234", "failed"), ("C234-1234-1234", "ignored")]
    assert results[0]["status"] == "failed" and results[0]["error"]["type"].endswith("malformed-event")
    r = requests.post(server.url + "/", data="[]", headers={"Content-Type": "application/cloudevents-batch+json"}, timeout=30)
    assert r.status_code == 202


@pytest.mark.parametrize("ctype", ["application/cloudevents-batch+json", "application/json"])
def test_a_batch_with_no_cloudevent_in_it_is_a_400(server, ctype):
    """An array posted by mistake is not a batch whose every entry failed (200): the request is malformed."""
    for body in ("[1, 2]", "[{}]", '[{"specversion": "1.0"}, "x"]'):
        r = requests.post(server.url + "/", data=body, headers={"Content-Type": ctype}, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["type"].endswith("malformed-event") and "no entry of the batch" in r.json()["detail"]
    # CloudEvents whose data is wrong are events all the same: each keeps its own result and id
    finalized = json.loads(shared_file("testdata", "storage", "gcs-object-finalized.cloudevent.json").read_text())
    broken = [{**finalized, "id": f"bad-{i}", "data": {"bucket": "b"}} for i in range(2)]
    r = requests.post(server.url + "/", data=json.dumps(broken), headers={"Content-Type": ctype}, timeout=30)
    assert r.status_code == 200, r.text
    assert [(o["id"], o["status"]) for o in r.json()["results"]] == [("bad-0", "failed"), ("bad-1", "failed")]


# -- statuses ------------------------------------------------------------------------------------------
def _good_request(server) -> None:
    files, _ = multipart(target="biden.jpg")
    assert requests.post(server.url + "/", files=files, timeout=60).status_code == 200
    assert server.alive()


def test_status_400_malformed_event_and_request(server):
    r = requests.post(server.url + "/", data=b"{}", headers={"ce-specversion": "1.0", "Content-Type": "application/json"}, timeout=30)
    assert_problem(r, 400)
    # the problem names what is missing (the SDK said "Failed to find specversion" of a sent ce-specversion)
    binary = {"ce-specversion": "1.0", "ce-type": "x.y", "ce-source": "/x", "Content-Type": "application/json"}
    detail = assert_problem(requests.post(server.url + "/", data=b"{}", headers=binary, timeout=30), 400)["detail"]
    assert "lacks the required ce-id header" in detail and "specversion" not in detail, detail
    structured = {"specversion": "1.0", "type": "x.y", "id": "1", "data": {}}
    r = requests.post(server.url + "/", data=json.dumps(structured),
                      headers={"Content-Type": "application/cloudevents+json"}, timeout=30)
    assert "lacks the required 'source' attribute" in assert_problem(r, 400)["detail"]
    r = requests.post(server.url + "/dead-letter", json={}, timeout=30)
    assert "ce-specversion header (binary mode)" in assert_problem(r, 400)["detail"]
    r = requests.post(server.url + "/", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=30)
    assert_problem(r, 400)
    files, _ = multipart()
    r = requests.post(server.url + "/", files={"source": files["source"]}, timeout=30)
    assert "target" in assert_problem(r, 400)["detail"]
    _good_request(server)


def test_status_403_outside_allow_list(server, store):
    for uri in ("file:///etc/passwd", "http://169.254.169.254/latest/meta-data", f"file://{store}/../etc/passwd",
                f"file://{store}/%2e%2e/etc/passwd", "gs://other-bucket/x.jpg"):
        r = requests.post(server.url + "/", json={"source": uri, "target": uri}, timeout=30)
        assert_problem(r, 403)
    _good_request(server)


def test_status_413_and_415_and_422(server, tmp_path):
    bomb = tmp_path / "bomb.png"
    from .test_images import png_header_only
    bomb.write_bytes(png_header_only(30000, 30000))
    r = requests.post(server.url + "/", files={"source": bomb.read_bytes(), "target": bomb.read_bytes()}, timeout=30)
    assert_problem(r, 413)
    text = tmp_path / "notes.jpg"
    text.write_text("hello " * 100)
    r = requests.post(server.url + "/", files={"source": text.read_bytes(), "target": text.read_bytes()}, timeout=30)
    assert_problem(r, 415)
    r = requests.post(server.url + "/", data=b"x", headers={"Content-Type": "text/plain"}, timeout=30)
    assert_problem(r, 415)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 300), (80, 80, 80)).save(blank)
    files, _ = multipart()
    r = requests.post(server.url + "/", files={"source": blank.read_bytes(), "target": files["target"]}, timeout=30)
    assert assert_problem(r, 422)["type"].endswith("no-source-face")
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(shared_file("images", "obama.jpg").read_bytes()[:5000])
    r = requests.post(server.url + "/", files={"source": truncated.read_bytes(), "target": files["target"]}, timeout=30)
    assert_problem(r, 422)
    _good_request(server)


def test_status_429_when_inflight_exceeded_and_gone_after(server):
    solvay = shared_file("images", "solvay_conference_1927.png").read_bytes()
    obama = shared_file("images", "obama.jpg").read_bytes()

    def call(_):
        r = requests.post(server.url + "/", files={"source": obama, "target": solvay}, data={"faces": "all"}, timeout=120)
        return r.status_code, r.headers.get("Retry-After")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    codes = [c for c, _ in results]
    assert 429 in codes and 200 in codes, codes
    assert all(ra is not None for c, ra in results if c == 429)
    _good_request(server)


def test_options_webhook_handshake(server):
    r = requests.options(server.url + "/", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=10)
    assert r.status_code == 200 and r.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"


def test_health_ready_metrics(server):
    _good_request(server)  # a fusion, so the stage histograms have series whatever ran before
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz", timeout=5).json()
    assert ready["status"] == "ready" and ready["revision"] == REVISION and ready["model_version"] == "test"
    text = requests.get(server.url + "/metrics", timeout=5).text
    assert "facefusion_requests_total" in text and "facefusion_stage_seconds_bucket" in text
    assert "facefusion_cold_start_seconds" in text
    assert_problem(requests.get(server.url + "/nope", timeout=5), 404)
    assert_problem(requests.delete(server.url + "/", timeout=5), 405)
    # paths functions-framework and Flask answered themselves, in HTML, unseen by logs and metrics
    for path in ("/favicon.ico", "/robots.txt", "/static/x.js"):
        for method in ("GET", "POST"):
            assert_problem(requests.request(method, server.url + path, timeout=5), 404)
    text = requests.get(server.url + "/metrics", timeout=5).text
    assert re.search(r'facefusion_requests_total\{kind="[^"]*",route="other",status="404"\} ([6-9]|\d\d)', text), text


def test_logs_are_json_lines_without_image_bytes(server):
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert lines and all({"revision", "status", "event_id", "path"} <= set(line) for line in lines)
    assert "/9j/" not in server.logs()  # base64 JPEG bytes never reach the log
