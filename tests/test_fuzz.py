"""Hostile input: property-based fuzzing of the request parsers and the image decoder.

Every input must get a deliberate answer (never a 500, never a dead worker) and the decoder must
either decode or raise a typed image error without allocating beyond the limits. The number of
inputs tried per run is FUZZ_EXAMPLES per target (small in CI; the README quotes a larger run), and
hypothesis keeps its corpus of interesting inputs in .hypothesis/ between runs.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import tracemalloc

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline import ImageError, ImageLimits, decode_image

from .conftest import REPO, shared_file
from .inprocess import InProcessServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
# CI replays a fixed sequence (a red CI must be reproducible); local runs explore new inputs each time.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                derandomize=bool(os.environ.get("CI")))
ALLOWED = {200, 202, 400, 401, 403, 404, 405, 413, 415, 422, 429, 503, 504}
TRIED: dict[str, int] = {}


def tried(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@pytest.fixture(scope="module")
def server(model_root, tmp_path_factory):
    srv = InProcessServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path_factory.mktemp("fuzz")),
                           "INPUT_URI_TEMPLATE": "memory://fuzz/{provider}/{bucket}/{name}",
                           "OUTPUT_URI": "memory://fuzz-out/{provider}/{name}.jpg", "SOURCE_FACE_URI": "memory://fuzz/face.jpg",
                           "MAX_INFLIGHT": "8"})
    yield srv
    srv.stop()
    stats = REPO / ".hypothesis" / "fuzz-stats.json"
    stats.parent.mkdir(exist_ok=True)
    stats.write_text(json.dumps(TRIED, indent=1, sort_keys=True))


def post(server, **kwargs) -> requests.Response:
    r = requests.post(server.url + "/", timeout=60, **kwargs)
    assert r.status_code in ALLOWED, (r.status_code, r.text[:300])
    return r


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)
CE_TYPES = ["dev.facefusion.fusion.requested", "google.cloud.storage.object.v1.finalized",
            "com.amazonaws.s3.ObjectCreated:Put", "Microsoft.Storage.BlobCreated", "x.y", ""]


@FUZZ
@given(body=json_values)
def test_json_bodies(server, body):
    tried("json")
    post(server, data=json.dumps(body), headers={"Content-Type": "application/json"})


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["source", "target", "output", "reference", "faces", "index", "options",
                                            "quality", "format"]), json_values, max_size=8))
def test_direct_json_fields(server, body):
    tried("direct-json")
    post(server, json=body)


@FUZZ
@given(ce_type=st.sampled_from(CE_TYPES), ce_id=st.from_regex(r"[!-~]{0,20}", fullmatch=True), extra=st.dictionaries(
    st.from_regex(r"ce-[a-z]{1,10}", fullmatch=True), st.from_regex(r"([!-~][ -~]{0,18}[!-~])?", fullmatch=True), max_size=4), body=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]))
def test_binary_cloudevents(server, ce_type, ce_id, extra, body, content_type):
    tried("cloudevent-binary")
    headers = {"ce-specversion": "1.0", "ce-type": ce_type, "ce-id": ce_id or "x",
               "ce-source": "/fuzz", "Content-Type": content_type, **extra}
    post(server, data=body, headers=headers)


@FUZZ
@given(event=st.fixed_dictionaries({"specversion": st.sampled_from(["1.0", "0.3", "2", ""]), "type": st.sampled_from(CE_TYPES),
                                    "source": st.text(max_size=10), "id": st.text(max_size=10)},
                                   optional={"data": json_values, "data_base64": st.text(max_size=40),
                                             "datacontenttype": st.sampled_from(["application/json", "text/plain"])}),
       batch=st.booleans())
def test_structured_and_batch_cloudevents(server, event, batch):
    tried("cloudevent-structured" if not batch else "cloudevent-batch")
    ctype = "application/cloudevents-batch+json" if batch else "application/cloudevents+json"
    post(server, data=json.dumps([event, event] if batch else event), headers={"Content-Type": ctype})


STORAGE = ["gcs-object-finalized.cloudevent.json", "s3-object-created-put.json", "minio-webhook-object-created-put.json",
           "azure-blob-created.cloudevent.json"]


def mutate(value, rng: random.Random, replacement):
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        choice = rng.random()
        if choice < 0.3:
            value.pop(key)
        elif choice < 0.6:
            value[key] = copy.deepcopy(replacement)
        else:
            mutate(value[key], rng, replacement)
    elif isinstance(value, list) and value:
        mutate(value[rng.randrange(len(value))], rng, replacement)
    return value


@FUZZ
@given(name=st.sampled_from(STORAGE), seed=st.integers(0, 2**32), replacement=json_values, rounds=st.integers(1, 4))
def test_storage_payloads(server, name, seed, replacement, rounds):
    tried("storage-payload")
    payload = json.loads(shared_file("testdata", "storage", name).read_text())
    rng = random.Random(seed)
    for _ in range(rounds):
        payload = mutate(payload, rng, replacement)
    ctype = "application/cloudevents+json" if name.startswith("gcs") else "application/json"
    post(server, data=json.dumps(payload), headers={"Content-Type": ctype})


@FUZZ
@given(source=st.binary(max_size=2000), target=st.binary(max_size=2000),
       fields=st.dictionaries(st.sampled_from(["faces", "index", "quality", "format", "enhance", "min_face_size",
                                               "reference_threshold", "output"]), st.text(max_size=20), max_size=5))
def test_multipart(server, source, target, fields):
    tried("multipart")
    post(server, files={"source": source, "target": target}, data=fields)


def real_image_bytes() -> list[bytes]:
    return [shared_file("images", n).read_bytes()[:200_000] for n in ("obama.jpg", "newton.png")]


@FUZZ
@given(data=st.data())
def test_decoder(data):
    """Mutated real images and random bytes: a picture or a typed error, within the limits."""
    tried("decoder")
    base = data.draw(st.sampled_from(real_image_bytes() + [b""]))
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(0, 8))):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    blob = bytes(blob[: data.draw(st.integers(0, len(blob)))]) if data.draw(st.booleans()) else bytes(blob)
    limits = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000)
    tracemalloc.start()
    try:
        decode_image(blob, limits)
    except ImageError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


def test_deep_json_invalid_utf8_and_exif_tricks(server):
    deep = "[" * 100_000 + "]" * 100_000
    assert post(server, data=deep, headers={"Content-Type": "application/json"}).status_code == 400
    assert post(server, data=b'{"source": "\xff\xfe"}', headers={"Content-Type": "application/json"}).status_code == 400
    deep_event = '{"specversion":"1.0","type":"x","source":"s","id":"1","data":' + "[" * 50_000 + "]" * 50_000 + "}"
    assert post(server, data=deep_event, headers={"Content-Type": "application/cloudevents+json"}).status_code in (202, 400)
    img = Image.new("RGB", (64, 64), (200, 150, 100))
    for orientation in (0, 9, 65535):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        img.save(buf, "JPEG", exif=exif)
        decoded = decode_image(buf.getvalue(), ImageLimits())
        assert decoded.bgr.shape == (64, 64, 3)
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def test_oversized_headers_against_gunicorn(model_root, tmp_path):
    from .server import FunctionServer

    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c")})
    try:
        r = requests.post(srv.url + "/", headers={"X-Big": "a" * 100_000}, data=b"{}", timeout=10)
        assert 400 <= r.status_code < 500
        r = requests.post(srv.url + "/", headers={f"X-H{i}": "v" for i in range(200)}, data=b"{}", timeout=10)
        assert 400 <= r.status_code < 500
        assert srv.alive()
    finally:
        srv.stop()
