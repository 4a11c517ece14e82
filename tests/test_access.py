"""Access: URIs outside the allow-list are refused before any I/O, output templates cannot be escaped,
and nothing secret or binary leaks into responses or logs."""

from __future__ import annotations

import base64
import json

import fsspec
import pytest
import requests

from .conftest import shared_file
from .fakefs import AliasedMemoryFS
from .inprocess import InProcessServer

CALLS: list[str] = []


class SpyFS(AliasedMemoryFS):
    """memory:// that records every path it is asked about."""

    protocol = "spy"
    store: dict = {}

    def info(self, path, **kwargs):
        CALLS.append(f"info {path}")
        return super().info(path, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        CALLS.append(f"open {path}")
        return super()._open(path, mode, **kwargs)

    def pipe_file(self, path, value, **kwargs):
        CALLS.append(f"write {path}")
        return super().pipe_file(path, value, **kwargs)


@pytest.fixture(scope="module")
def server(model_root, tmp_path_factory):
    fsspec.register_implementation("spy", SpyFS, clobber=True)
    fs = SpyFS()
    fs.pipe("/allowed/face.jpg", shared_file("images", "obama.jpg").read_bytes())
    fs.pipe("/allowed/in/pic.jpg", shared_file("images", "biden.jpg").read_bytes())
    fs.pipe("/secret/data.jpg", shared_file("images", "biden.jpg").read_bytes())
    srv = InProcessServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path_factory.mktemp("access")),
                           "ALLOWED_URI_PREFIXES": "spy://allowed/", "AUTH_TOKEN": "tok-3f9a1c",
                           "SOURCE_FACE_URI": "spy://allowed/face.jpg", "INPUT_URI_TEMPLATE": "spy://allowed/in/{name}",
                           "OUTPUT_URI": "spy://allowed/out/{name}"})
    yield srv
    srv.stop()


AUTH = {"Authorization": "Bearer tok-3f9a1c"}


@pytest.mark.parametrize("uri", ["spy://secret/data.jpg", "spy://allowed/../secret/data.jpg",
                                 "spy://allowed/in/%2e%2e/%2e%2e/secret/data.jpg", "spy://allowed-not/x.jpg",
                                 "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/iam",
                                 "http://[fd00:ec2::254]/latest", "gs://metadata.google.internal/x"])
def test_refused_before_any_io(server, uri):
    CALLS.clear()
    r = requests.post(server.url + "/", json={"source": uri, "target": "spy://allowed/in/pic.jpg"}, headers=AUTH, timeout=30)
    assert r.status_code == 403, r.text
    assert CALLS == []
    assert "secret" not in r.text and "169.254" not in r.text


@pytest.mark.parametrize("key", ["../secret/escape.jpg", "a/../../secret/escape.jpg", "%2e%2e/secret/escape.jpg",
                                 "..%2Fsecret%2Fescape.jpg"])
def test_output_template_cannot_be_escaped(server, key):
    SpyFS().pipe(f"/allowed/in/{key}", b"x")
    CALLS.clear()
    event = {"EventName": "s3:ObjectCreated:Put", "Records": [{"eventName": "s3:ObjectCreated:Put",
             "s3": {"bucket": {"name": "b"}, "object": {"key": key, "eTag": "1"}}}]}
    r = requests.post(server.url + "/", json=event, headers=AUTH, timeout=30)
    assert r.status_code == 200
    result = r.json()["results"][0]
    assert result["status"] == "failed" and result["error"]["status"] == 403
    assert not [c for c in CALLS if c.startswith("write")]
    assert not SpyFS().exists("/secret/escape.jpg")


def test_every_route_but_health_needs_the_token(server):
    for method, path in (("GET", "/metrics"), ("GET", "/openapi.json"), ("POST", "/"), ("GET", "/nope")):
        assert requests.request(method, server.url + path, timeout=10).status_code == 401
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def test_no_secrets_or_image_bytes_in_errors_or_logs(server, capsys):
    face = base64.b64encode(shared_file("images", "obama.jpg").read_bytes()).decode()
    bad = {"source": face, "target": face[:5000], "output": "spy://secret/x.jpg?X-Amz-Signature=deadbeefcafe"}
    r = requests.post(server.url + "/", json=bad, headers=AUTH, timeout=30)
    assert r.status_code in (400, 403, 422)
    requests.get(server.url + "/metrics", headers={"Authorization": "Bearer wrong-tok-3f9a1c-guess"}, timeout=5)
    out = capsys.readouterr().out
    for text in (r.text, out):
        assert "tok-3f9a1c" not in text and "deadbeefcafe" not in text and face[:64] not in text
    assert all(json.loads(line) for line in out.splitlines() if line.startswith("{"))
