"""Contracts: CloudEvents conformance, auth, readiness, and the OpenAPI document against real responses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests
import yaml
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from function.events import from_cloudevent, parse_cloudevent

from .conftest import shared_file
from .server import FunctionServer


def conformance_cases() -> list[dict]:
    cases = []
    for name in ("v1.0_v1_minimum.yaml", "v1.yaml"):
        path = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "cloudevents" / name
        if path.is_file():
            cases += [c for c in yaml.safe_load_all(path.read_text()) if c and "ContextAttributes" in c]
    return cases


CASES = conformance_cases()


@pytest.mark.skipif(not CASES, reason="../shared/testdata/cloudevents is missing")
@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c["ContextAttributes"].get("id")))
def test_conformance_cases_parse_with_every_attribute(case, mode):
    raw = dict(case["ContextAttributes"])
    extensions = raw.pop("Extensions", None) or case.get("Extensions") or {}
    attrs = {k: (v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else str(v)) for k, v in raw.items()}
    attrs.update({k: str(v) for k, v in extensions.items()})
    data = case.get("Data")
    event = CloudEvent(attrs, data.encode() if isinstance(data, str) else data)
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    parsed = parse_cloudevent(headers, body)
    for key, value in attrs.items():
        assert str(parsed.get(key)) == value, key
    job = from_cloudevent(parsed)
    assert job.ignored and job.event_id == attrs["id"]


def test_structured_examples_from_the_spec():
    raw = shared_file("testdata", "cloudevents", "03_json_object_data.structured.json").read_bytes()
    event = parse_cloudevent({"content-type": "application/cloudevents+json"}, raw)
    assert event["comexampleextension1"] == "value" and event["comexampleothervalue"] == 5
    assert event.get_data() == {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True}
    raw = shared_file("testdata", "cloudevents", "06_data_base64_json.structured.json").read_bytes()
    event = parse_cloudevent({"content-type": "application/cloudevents+json"}, raw)
    data = event.get_data()
    assert (json.loads(data) if isinstance(data, bytes) else data) == {"xyz": 123}


@pytest.fixture(scope="module")
def guarded(model_root, tmp_path_factory):
    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path_factory.mktemp("auth")),
                          "AUTH_TOKEN": "s3cr3t-token", "K_REVISION": "auth-1"})
    yield srv
    srv.stop()


def test_token_guards_everything_but_health_and_handshake(guarded):
    assert requests.get(guarded.url + "/healthz", timeout=5).status_code == 200
    assert requests.get(guarded.url + "/readyz", timeout=5).status_code == 200
    for method, path in (("GET", "/metrics"), ("GET", "/openapi.json"), ("POST", "/")):
        r = requests.request(method, guarded.url + path, timeout=10)
        assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"
        assert "s3cr3t" not in r.text
    handshake = requests.options(guarded.url + "/", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=5)
    assert handshake.status_code == 200  # the handshake carries no token (see README)
    r = requests.get(guarded.url + "/metrics", headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert r.status_code == 401
    r = requests.get(guarded.url + "/metrics", headers={"Authorization": "Bearer s3cr3t-token"}, timeout=5)
    assert r.status_code == 200
    assert "s3cr3t" not in guarded.logs()


def test_bad_model_set_stays_not_ready_with_reason(model_root, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(model_root / "test", broken / "v1")
    (broken / "v1" / "rec.onnx").write_bytes(b"corrupt")
    srv = FunctionServer({"MODEL_PATH": str(broken), "MODEL_VERSION": "v1", "CACHE_PATH": str(tmp_path / "c")})
    try:
        r = requests.get(srv.url + "/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["status"] == "failed" and "rec.onnx" in r.json()["reason"]
        files = {"source": shared_file("images", "obama.jpg").read_bytes(), "target": shared_file("images", "biden.jpg").read_bytes()}
        r = requests.post(srv.url + "/", files=files, timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert srv.alive()
    finally:
        srv.stop()


def test_openapi_is_valid_and_true_to_responses(guarded):
    from openapi_spec_validator import validate

    auth = {"Authorization": "Bearer s3cr3t-token"}
    spec = requests.get(guarded.url + "/openapi.json", headers=auth, timeout=5).json()
    validate(spec)
    images = {n: shared_file("images", n).read_bytes() for n in ("obama.jpg", "biden.jpg")}
    calls = [
        ("get", "/healthz", {}), ("get", "/readyz", {}), ("get", "/metrics", {}), ("get", "/openapi.json", {}),
        ("options", "/", {"headers": {**auth, "WebHook-Request-Origin": "x"}}),
        ("post", "/", {"files": {"source": images["obama.jpg"], "target": images["biden.jpg"]}}),
        ("post", "/", {"files": {"source": b"text", "target": images["biden.jpg"]}}),
        ("post", "/", {"json": {"source": "file:///etc/passwd", "target": "x"}}),
        ("post", "/", {"data": "[]", "headers": {**auth, "Content-Type": "application/cloudevents-batch+json"}}),
        ("post", "/", {"data": "{}", "headers": {**auth, "ce-specversion": "1.0"}}),
        ("post", "/", {"headers": {}}),
        ("delete", "/", {}),
        ("options", "/", {}),
    ]
    for method, path, kwargs in calls:
        kwargs.setdefault("headers", auth)
        r = requests.request(method, guarded.url + path, timeout=60, **kwargs)
        op = spec["paths"][path]["post" if method == "delete" else method]  # a 405 is declared with the methods
        declared = op["responses"].get(str(r.status_code))
        assert declared is not None, f"{method.upper()} {path} answered {r.status_code}, not in the spec"
        if "$ref" in declared:
            declared = spec["components"]["responses"][declared["$ref"].rsplit("/", 1)[-1]]
        media = r.headers.get("Content-Type", "").split(";")[0]
        if declared.get("content"):
            assert media in declared["content"], f"{method.upper()} {path} {r.status_code}: {media} not declared"
        if media == "application/problem+json":
            schema = spec["components"]["schemas"]["Problem"]
            assert set(schema["required"]) <= set(r.json())
        for header in declared.get("headers", {}):
            if header.startswith("X-") or header in ("Server-Timing", "Allow"):
                assert header in r.headers, f"{header} missing from {method.upper()} {path}"
        json.dumps(spec)
