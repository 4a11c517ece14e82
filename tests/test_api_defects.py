"""The API defects of the issue, each over real HTTP (gunicorn on loopback) or the real cloudevents SDK:
batch caps and clients that went away (5), Accept negotiation (13), one option schema (14), Allow and
bodiless answers (15), errors that name their image and a reference that matches nothing (16), output
formats we do not write (12)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from PIL import Image

from function import events, options
from function.direct import client_gone
from pipeline import FuseOptions, Selection
from pipeline.errors import InvalidOptions, NoMatchingFace

from .conftest import shared_file
from .server import FunctionServer

MAX_BATCH = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    (root / "faces").mkdir()
    for name in ("obama.jpg", "two_people.jpg"):
        shutil.copy(shared_file("images", name), root / "faces" / name)
    return root


@pytest.fixture(scope="module")
def server(model_root, store, tmp_path_factory):
    srv = FunctionServer({
        "MODEL_PATH": str(model_root),
        "CACHE_PATH": str(tmp_path_factory.mktemp("fn-cache")),
        "SOURCE_FACE_URI": f"file://{store}/faces/obama.jpg",
        "INPUT_URI_TEMPLATE": f"file://{store}/in/{{provider}}/{{bucket}}/{{name}}",
        "OUTPUT_URI": f"file://{store}/out/{{provider}}/{{bucket}}/{{name}}.fused.jpg",
        "ALLOWED_URI_PREFIXES": f"file://{store}/",
        "ALLOWED_OUTPUT_PREFIXES": f"file://{store}/",  # direct and requested outputs go beside the inputs here
        "MAX_INFLIGHT": "2",
        "MAX_BATCH": str(MAX_BATCH),
    })
    yield srv
    srv.stop()


def image(name: str) -> bytes:
    return shared_file("images", name).read_bytes()


def fuse(server, source="obama.jpg", target="biden.jpg", headers=None, **fields) -> requests.Response:
    files = {"source": image(source) if isinstance(source, str) else source,
             "target": image(target) if isinstance(target, str) else target}
    if "reference" in fields:
        ref = fields.pop("reference")
        files["reference"] = image(ref) if isinstance(ref, str) else ref
    return requests.post(server.url + "/", files=files, data=fields, headers=headers or {}, timeout=60)


def problem(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    return r.json()


def outputs(store: Path) -> list[Path]:
    return sorted(p for p in (store / "out").rglob("*") if p.is_file()) if (store / "out").exists() else []


def log_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]


# -- 5: batch caps ---------------------------------------------------------------------------------
def _gcs_events(store: Path, count: int, prefix: str) -> list[dict]:
    raw = json.loads(shared_file("testdata", "storage", "gcs-object-finalized.cloudevent.json").read_text())
    out = []
    for i in range(count):
        name = f"{prefix}-{i}.jpg"
        path = store / "in" / "gcs" / "cap" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_file("images", "biden.jpg"), path)
        out.append(dict(raw, id=f"{prefix}-{i}", data=dict(raw["data"], bucket="cap", name=name)))
    return out


def test_batches_over_max_batch_are_413_before_any_entry_runs(server, store):
    shutil.rmtree(store / "out", ignore_errors=True)
    over = _gcs_events(store, MAX_BATCH + 1, "over")
    for body, ctype in ((over, "application/cloudevents-batch+json"), (over, "application/json")):  # Event Grid arrays
        body = problem(requests.post(server.url + "/", data=json.dumps(body), headers={"Content-Type": ctype}, timeout=60), 413)
        assert body["type"].endswith("/batch-too-large") and f"at most {MAX_BATCH}" in body["detail"]
    minio = json.loads(shared_file("testdata", "storage", "minio-webhook-object-created-put.json").read_text())
    minio["Records"] = minio["Records"] * (MAX_BATCH + 1)
    body = problem(requests.post(server.url + "/", json=minio, timeout=60), 413)
    assert "Records" in body["detail"] and "MAX_BATCH" in body["detail"]
    assert outputs(store) == []  # no entry ran
    # at the cap, every entry runs
    r = requests.post(server.url + "/", data=json.dumps(_gcs_events(store, MAX_BATCH, "at")),
                      headers={"Content-Type": "application/cloudevents-batch+json"}, timeout=120)
    assert r.status_code == 200, r.text
    assert [o["status"] for o in r.json()["results"]] == ["done"] * MAX_BATCH


def test_max_batch_defaults_to_32():
    from function.config import FunctionConfig

    limit = FunctionConfig.from_env({}).max_batch
    assert limit == 32
    assert FunctionConfig.from_env({"MAX_BATCH": "lots"}).problems  # a bad value fails readiness
    entry = {"specversion": "1.0", "type": "x.y", "source": "/t", "id": "1"}
    assert len(events.parse_batch(json.dumps([entry] * 32).encode(), limit)) == 32
    with pytest.raises(events.Problem) as exc:
        events.parse_batch(json.dumps([entry] * 33).encode(), limit)
    assert exc.value.status == 413
    with pytest.raises(events.Problem):
        events.from_minio({"Records": [{}] * 33}, limit)


# -- 5: clients that went away ---------------------------------------------------------------------
def _request(environ_key: str, sock: socket.socket) -> SimpleNamespace:
    return SimpleNamespace(environ={environ_key: sock})


@pytest.mark.parametrize("key", ["gunicorn.socket", "werkzeug.socket"])
def test_client_gone_reads_the_socket_without_consuming_it(key):
    ours, theirs = socket.socketpair()
    try:
        request = _request(key, ours)
        assert not client_gone(request)  # connected, nothing to read
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request: still there
        assert not client_gone(request)
        assert ours.recv(100) == b"GET / HTTP/1.1\r\n"  # peeked, not consumed
        theirs.close()
        assert client_gone(request)
    finally:
        ours.close()
    assert not client_gone(SimpleNamespace(environ={}))  # no socket offered: unknown, so present


def test_client_that_closed_is_not_fused(server, store):
    """A request sent whole and then abandoned is dropped before it takes a fusion slot: no output,
    no stage ran, and the log says 499."""
    out = store / "gone" / "never.jpg"
    body = json.dumps({"source": f"file://{store}/faces/obama.jpg", "target": f"file://{store}/faces/obama.jpg",
                       "output": f"file://{out}"}).encode()
    if not hasattr(socket, "TCP_CORK"):
        pytest.skip("needs Linux's TCP_CORK to send the request and the close as one segment")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # corked, the request is held back and leaves with the FIN of close() in one segment: the server
        # cannot read the request before the close, however the two processes are scheduled
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    deadline = time.time() + 30
    while time.time() < deadline:
        gone = [line for line in log_lines(server) if line["status"] == 499]
        if gone:
            break
        time.sleep(0.1)
    assert gone, server.logs()[-2000:]
    assert "before the fusion started" in gone[-1]["error"] and gone[-1]["server_timing"] == ""
    assert not out.exists()
    assert fuse(server).status_code == 200  # a client that waits is answered as always


# -- 13: Accept --------------------------------------------------------------------------------------
@pytest.mark.parametrize("accept,expected", [
    ("image/jpeg, image/png", "image/jpeg"),
    ("image/png, image/jpeg", "image/png"),
    ("image/webp;q=0", "image/jpeg"),
    ("image/webp;q=0, */*", "image/jpeg"),
    ("image/webp;q=0.5, image/png", "image/png"),
    ("*/*;q=0.1, image/webp", "image/webp"),
    ("*/*", "image/jpeg"),
    ("image/*", "image/jpeg"),
    ("image/jpeg;q=0", "image/png"),  # refused, it was written all the same
    ("image/jpeg;q=0, image/png;q=0", "image/webp"),
    ("image/*;q=0, image/webp;q=0.2", "image/webp"),
    ("application/json", "image/jpeg"),
    (None, "image/jpeg"),
])
def test_accept_honours_q_values_and_order(server, accept, expected):
    r = fuse(server, headers={"Accept": accept})  # None: no Accept header at all
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == expected


@pytest.mark.parametrize("accept", ["*/*;q=0", "image/*;q=0", "image/jpeg;q=0, image/png;q=0, image/webp;q=0"])
def test_an_accept_that_refuses_every_image_type_is_406_unless_format_is_given(server, accept):
    body = problem(fuse(server, headers={"Accept": accept}), 406)
    assert body["type"].endswith("/not-acceptable") and "format" in body["detail"]
    r = fuse(server, headers={"Accept": accept}, format="png")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"


def test_format_option_beats_accept_and_accept_never_picks_a_written_format(server, store):
    r = fuse(server, headers={"Accept": "image/png"}, format="webp")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/webp"
    out = store / "accept" / "result.png"
    body = {"source": f"file://{store}/faces/obama.jpg", "target": f"file://{store}/faces/obama.jpg", "output": f"file://{out}"}
    r = requests.post(server.url + "/", json=body, headers={"Accept": "image/webp"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["media_type"] == "image/png" and Image.open(out).format == "PNG"  # the URI's extension


def test_a_format_the_output_contradicts_and_a_quality_for_png_are_refused(server, store):
    """Silently done, they wrote JPEG bytes into a.png, and ignored the quality a client asked for."""
    images = {"source": f"file://{store}/faces/obama.jpg", "target": f"file://{store}/faces/obama.jpg"}
    out = store / "accept" / "contradicted.png"
    r = requests.post(server.url + "/", json={**images, "output": f"file://{out}", "format": "jpeg"}, timeout=60)
    assert "disagrees with the output's extension .png" in problem(r, 400)["detail"] and not out.exists()
    r = requests.post(server.url + "/", json={**images, "output": f"file://{out}", "format": "png"}, timeout=60)
    assert r.status_code == 200 and Image.open(out).format == "PNG", r.text  # agreeing is fine
    for answer in (fuse(server, format="png", quality="10"),
                   fuse(server, headers={"Accept": "image/png, image/jpeg;q=0, image/webp;q=0"}, quality="10"),
                   requests.post(server.url + "/", json={**images, "output": f"file://{out}", "quality": 10}, timeout=60)):
        assert "quality applies to JPEG and WebP" in problem(answer, 400)["detail"]
    assert fuse(server, format="webp", quality="10").headers["Content-Type"] == "image/webp"
    # a quality asks for a lossy answer: Accept's best lossy type, not a 400 for the PNG it prefers
    for accept, expected in (("image/png, image/jpeg", "image/jpeg"), ("image/png, image/webp", "image/webp"),
                             ("image/png", "image/jpeg"), ("image/jpeg;q=0", "image/webp")):
        r = fuse(server, headers={"Accept": accept}, quality="10")
        assert r.status_code == 200 and r.headers["Content-Type"] == expected, (accept, r.text)


# -- 14: one option schema -------------------------------------------------------------------------
@pytest.mark.parametrize("opts,named", [
    ({"faces": "index", "index": 1.5}, "index"),
    ({"faces": "index", "index": True}, "index"),
    ({"quality": True}, "quality"),
    ({"quality": "90"}, "quality"),
    ({"enhance": "maybe"}, "enhance"),
    ({"enhance": 1}, "enhance"),
    ({"reference_threshold": "0.5"}, "reference_threshold"),
    ({"faces": 3}, "faces"),
    ({"quality": 101}, "quality"),
    ({"bogus": 1, "also": 2}, "'also', 'bogus'"),
])
@pytest.mark.parametrize("where", ["options", "beside"])
def test_json_options_must_have_their_types(server, store, opts, named, where):
    """Two faces in the target, so that index 1 (what 1.5 and true used to become) exists."""
    images = {"source": f"file://{store}/faces/obama.jpg", "target": f"file://{store}/faces/two_people.jpg"}
    body = {**images, "options": opts} if where == "options" else {**images, **opts}
    detail = problem(requests.post(server.url + "/", json=body, timeout=60), 400)["detail"]
    assert named in detail and ("must be" in detail or "unknown option" in detail)


def test_json_options_well_typed_are_taken(server, store):
    images = {"source": f"file://{store}/faces/obama.jpg", "target": f"file://{store}/faces/obama.jpg"}
    r = requests.post(server.url + "/", json={**images, "reference": images["source"],
                                             "options": {"quality": 50.0, "enhance": False, "format": "webp",
                                                         "faces": "reference", "reference_threshold": 0}}, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/webp", r.text
    r = requests.post(server.url + "/", json={**images, "format": "png", "options": {"format": "webp"}}, timeout=60)
    assert "given both" in problem(r, 400)["detail"]


@pytest.mark.parametrize("fields,named", [
    ({"faces": "index", "index": "1.5"}, "index"),
    ({"faces": "index", "index": "one"}, "index"),
    ({"enhance": "maybe"}, "enhance"),
    ({"quality": "0"}, "quality"),
    ({"reference_threshold": "nan", "faces": "reference"}, "reference_threshold"),
    ({"bogus": "1"}, "bogus"),
    ({"index": "1"}, "index applies when faces is index, not largest"),
    ({"faces": "all", "reference_threshold": "0.9"}, "reference_threshold applies when faces is reference, not all"),
])
def test_multipart_options_are_parsed_from_text_strictly(server, fields, named):
    assert named in problem(fuse(server, **fields), 400)["detail"]


def test_a_video_job_accepted_before_the_rule_still_reads_its_options():
    """A video's segments read the stored options again: a job an earlier revision accepted with an index
    beside faces=all must not fail halfway through after a rollout."""
    from function import video_options

    with pytest.raises(InvalidOptions, match="index applies when faces is index"):
        video_options.build({"faces": "all", "index": 0})
    assert video_options.build({"faces": "all", "index": 0}, accepted=True).fuse.selection.mode == "all"
    with pytest.raises(InvalidOptions, match="reference applies when faces is reference, not largest"):
        video_options.build({"reference": "file:///faces/obama.jpg"})  # a video's reference, likewise
    assert video_options.build({"reference": "file:///faces/obama.jpg"}, accepted=True).fuse.selection.mode == "largest"


def test_an_option_of_another_selection_is_refused_not_ignored(server, store):
    """index without faces=index (or a threshold without faces=reference) would be ignored, and the client
    would get another face swapped than it asked for; as with enhancer without enhance, it is a 400."""
    images = {"source": f"file://{store}/faces/obama.jpg", "target": f"file://{store}/faces/two_people.jpg"}
    for opts in ({"index": 1}, {"faces": "all", "index": 0}, {"faces": "index", "index": 0, "reference_threshold": 0.5}):
        detail = problem(requests.post(server.url + "/", json={**images, "options": opts}, timeout=60), 400)["detail"]
        assert "applies when faces is" in detail, detail
    r = requests.post(server.url + "/", json={**images, "options": {"faces": "index", "index": 1}}, timeout=60)
    assert r.status_code == 200 and r.headers["X-Faces-Swapped"] == "1", r.text
    # a reference image without faces=reference: it chose nothing, the largest face was swapped instead
    reference = f"file://{store}/faces/obama.jpg"
    for body in ({**images, "reference": reference}, {**images, "options": {"faces": "all", "reference": reference}}):
        detail = problem(requests.post(server.url + "/", json=body, timeout=60), 400)["detail"]
        assert "reference applies when faces is reference" in detail, detail
    detail = problem(fuse(server, target="two_people.jpg", reference="obama.jpg"), 400)["detail"]  # multipart
    assert "reference applies when faces is reference, not largest" in detail, detail
    blank = fuse(server, target="two_people.jpg", reference=("", b""))  # a plain form's file input left blank
    assert blank.status_code == 200, blank.text
    r = fuse(server, target="two_people.jpg", reference="obama.jpg", faces="reference", reference_threshold="0")
    assert r.status_code == 200, r.text


def test_a_multipart_body_that_cannot_be_parsed_says_so(server):
    """Not "field 'source' is required" for a request that carried one the server could not find."""
    good = requests.Request("POST", server.url + "/", files={"source": image("obama.jpg"), "target": image("biden.jpg")}).prepare()
    small = requests.Request("POST", server.url + "/", files={"source": _png(), "target": _png()}).prepare()
    for ctype, body in (("multipart/form-data", good.body),  # no boundary
                        ("multipart/form-data; boundary=elsewhere", small.body),  # not the body's boundary
                        (good.headers["Content-Type"], b"not multipart at all")):
        r = requests.post(server.url + "/", data=body, headers={"Content-Type": ctype}, timeout=30)
        assert problem(r, 400)["type"].endswith("/malformed-multipart"), (ctype, r.text)
    r = requests.post(server.url + "/", data=good.body, headers={"Content-Type": good.headers["Content-Type"]}, timeout=60)
    assert r.status_code == 200, r.text


def test_multipart_options_as_text(server):
    r = fuse(server, target="two_people.jpg", faces="index", index="1", enhance="off", quality=" 80 ", min_face_size="")
    assert r.status_code == 200 and r.headers["X-Faces-Swapped"] == "1", r.text
    assert problem(fuse(server, faces="index", index=["0", "1"]), 400)["detail"].endswith("more than once")


def test_fusion_requested_options_are_checked_by_the_same_schema(server, store):
    for opts, named in (({"quality": True}, "quality"), ({"bogus": 1}, "bogus"), ({"enhance": "yes"}, "enhance")):
        event = CloudEvent({"type": events.FUSION_REQUESTED, "source": "/tests"},
                           {"source": f"file://{store}/faces/obama.jpg", "target": f"file://{store}/faces/obama.jpg",
                            "output": f"file://{store}/req/{named}.jpg", "options": opts})
        headers, body = to_binary(event)
        assert named in problem(requests.post(server.url + "/", data=body, headers=headers, timeout=60), 400)["detail"]
        assert not (store / "req" / f"{named}.jpg").exists()


def test_openapi_options_are_the_validators_schema(server):
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    post = spec["paths"]["/"]["post"]["requestBody"]["content"]
    multipart = post["multipart/form-data"]["schema"]["properties"]
    direct = post["application/json"]["schema"]["oneOf"][0]
    for name, prop in options.properties().items():
        assert multipart[name] == prop == direct["properties"][name] == direct["properties"]["options"]["properties"][name]
    assert direct["properties"]["options"]["additionalProperties"] is False
    assert direct["additionalProperties"] is False


CANDIDATES = [None, True, False, 0, 1, -1, 1.0, 1.5, 92, 101, 0.4, -1.5, "", "1", "largest", "reference", "png",
              "gif", "bmp", "JPEG", [], {},
              # list and quality options (pixel_boost, mask, mask_padding, mask_regions)
              ["box"], ["box", "occlusion"], ["bogus"], "box,region", "box, occlusion ", "box,,region", [1],
              [0, 0, 0, 0], [10, 0, 5, 100], [1, 2, 3], [0, 0, 0, 101], "10,0,0,5", "10,0,0", [1.0, 2, 3, 4],
              [True, 0, 0, 0], ["nose", "skin"], "nose,left-eye", ["ears"], 128, 256, 512, 1024, 300, 512.0, 0.3]


@pytest.mark.parametrize("name", list(options.BY_NAME))
def test_json_validator_agrees_with_the_json_schema(name):
    """Every candidate value is accepted by the hand-written validator exactly when jsonschema accepts it
    under the schema the OpenAPI document publishes."""
    schema = options.schema()
    for value in CANDIDATES:
        expected = jsonschema.Draft202012Validator(schema).is_valid({name: value})
        try:
            options.validate({name: value})
            accepted = True
        except Exception:
            accepted = False
        assert accepted == expected, (name, value)
    assert not jsonschema.Draft202012Validator(schema).is_valid({"bogus": 1})


def test_form_words_are_the_settings_words():
    from pipeline.config import FALSE_WORDS, TRUE_WORDS

    for word in TRUE_WORDS:
        assert options.validate({"enhance": word.upper()}, form=True) == {"enhance": True}
    for word in FALSE_WORDS:
        assert options.validate({"enhance": word}, form=True) == {"enhance": False}
    assert options.validate({"index": "+3", "reference_threshold": "-.5", "quality": ""}, form=True) == {
        "index": 3, "reference_threshold": -0.5}


# -- 15: Allow, and answers without a body ---------------------------------------------------------
def test_405_names_the_allowed_methods(server):
    r = requests.delete(server.url + "/", timeout=10)
    problem(r, 405)
    assert r.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    r = requests.post(server.url + "/healthz", timeout=10)
    problem(r, 405)
    assert r.headers["Allow"] == "GET, HEAD"
    r = requests.get(server.url + "/", headers={"Accept": "application/json"}, timeout=10)  # the demo page is for browsers
    problem(r, 405)
    assert r.headers["Allow"] == "GET, HEAD, OPTIONS, POST"


def test_bodiless_answers_claim_no_content_type(server):
    deleted = json.loads(shared_file("testdata", "storage", "gcs-object-finalized.cloudevent.json").read_text())
    deleted["type"] = "google.cloud.storage.object.v1.deleted"
    answers = [
        requests.post(server.url + "/", data=json.dumps(deleted), headers={"Content-Type": "application/cloudevents+json"}, timeout=30),
        requests.post(server.url + "/", data="[]", headers={"Content-Type": "application/cloudevents-batch+json"}, timeout=30),
        requests.options(server.url + "/", timeout=10),
        requests.options(server.url + "/", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=10),
    ]
    assert [r.status_code for r in answers] == [202, 202, 204, 200]
    for r in answers:
        assert r.content == b"" and "Content-Type" not in r.headers, r.headers
    assert answers[2].headers["Allow"] == "GET, HEAD, OPTIONS, POST"


# -- 16: which image failed, and a reference that matches nothing ----------------------------------
def _png(size=(300, 300), colour=(80, 80, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_image_errors_name_the_image(server):
    from .test_images import png_header_only

    cases = [
        ({"target": b""}, 400, "empty-image", "target"),
        ({"source": b"hello " * 50}, 415, "unsupported-image-type", "source"),
        ({"target": image("obama.jpg")[:5000]}, 422, "undecodable-image", "target"),
        ({"reference": png_header_only(30000, 30000), "faces": "reference"}, 413, "image-too-large", "reference"),
        ({"source": _png()}, 422, "no-source-face", "source"),
        ({"target": _png()}, 422, "no-target-face", "target"),
        ({"reference": _png(), "faces": "reference"}, 422, "no-reference-face", "reference"),
    ]
    for fields, status, code, name in cases:
        body = problem(fuse(server, **fields), status)
        assert body["type"].endswith("/" + code) and body["image"] == name, body
        assert name in body["detail"], body


@pytest.mark.parametrize("size", [(641, 1), (1, 641), (20000, 3)])
def test_a_sliver_of_an_image_has_no_face_not_an_internal_error(server, size):
    """An image over 640 times wider than tall (or taller than wide) letterboxes to under one pixel of the
    detector's input: it was a 503 (retry) for a request that can never succeed."""
    assert problem(fuse(server, target=_png(size)), 422)["type"].endswith("/no-target-face")
    assert problem(fuse(server, source=_png(size)), 422)["type"].endswith("/no-source-face")
    assert fuse(server).status_code == 200


def test_json_image_errors_name_the_image(server, store):
    body = {"source": f"file://{store}/faces/obama.jpg", "target": "not base64 !", "reference": "also not"}
    assert problem(requests.post(server.url + "/", json=body, timeout=30), 400)["image"] == "target"
    body = {"source": f"file://{store}/faces/missing.jpg", "target": f"file://{store}/faces/obama.jpg"}
    r = requests.post(server.url + "/", json=body, timeout=30)
    assert r.status_code >= 400 and r.json()["image"] == "source", r.text


def test_reference_that_matches_no_face_is_422(server):
    body = problem(fuse(server, target="biden.jpg", reference="obama.jpg", faces="reference", reference_threshold="1"), 422)
    assert body["type"].endswith("/no-matching-face") and body["image"] == "target"
    r = fuse(server, target="biden.jpg", reference="biden.jpg", faces="reference", reference_threshold="0.9")
    assert r.status_code == 200 and r.headers["X-Faces-Swapped"] == "1", r.text


def test_pipeline_raises_no_matching_face(fuser):
    from pipeline import decode_image

    obama = decode_image(image("obama.jpg"), fuser.limits)
    biden = decode_image(image("biden.jpg"), fuser.limits)
    with pytest.raises(NoMatchingFace) as exc:
        fuser.fuse(obama, biden, FuseOptions(selection=Selection("reference", reference_threshold=1.0), reference=obama))
    assert exc.value.code == "no-matching-face" and exc.value.image == "target"


# -- 12: formats we do not write -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["gif", "bmp"])
def test_unwritable_format_is_400_naming_the_formats(server, store, fmt):
    for r in (fuse(server, format=fmt),
              requests.post(server.url + "/", json={"source": f"file://{store}/faces/obama.jpg",
                                                    "target": f"file://{store}/faces/obama.jpg", "format": fmt}, timeout=30)):
        detail = problem(r, 400)["detail"]
        assert all(name in detail for name in ("jpeg", "png", "webp")) and fmt in detail


# -- 7 (the multipart part): werkzeug's own limits are the caller's mistake, not a retryable 503 -----------
def test_too_many_multipart_parts_or_an_oversized_field_is_413_not_503(server):
    images = [("source", ("s.jpg", b"x")), ("target", ("t.jpg", b"y"))]
    many = images + [(f"field{i}", (None, "1")) for i in range(1100)]  # werkzeug parses at most 1000 parts
    r = requests.post(server.url + "/", files=many, timeout=30)
    body = problem(r, 413)
    assert "Retry-After" not in r.headers and body["type"].endswith("request-too-large")
    r = requests.post(server.url + "/", files=[*images, ("faces", (None, "a" * 700_000))], timeout=30)
    problem(r, 413)  # a text field over the form memory limit
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def test_a_malformed_chunk_size_is_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\n{}\r\n0\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
