"""Storage backends the function claims: memory:// (in-process server, real HTTP) and s3:// against
moto's standalone S3 server (what s3fs itself tests against); plus the URI allow-list."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import fsspec
import pytest
import requests

from function.problems import Problem
from function.uris import AllowList

from .conftest import shared_file
from .server import FunctionServer, free_port


# -- allow-list ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri", [
    "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "https://metadata.google.internal/x",
    "s3://other/x.jpg", "s3://allowed-evil/x.jpg", "memory:/x", "/etc/passwd", "s3://allowed/../other/x",
    "s3://allowed/a/%2e%2e/%2e%2e/other/x", "s3://allowed/x.jpg?versionId=1", "s3://allowed/x\x00.jpg",
])
def test_refused_before_any_io(uri):
    with pytest.raises(Problem) as info:
        AllowList(("s3://allowed/", "memory://")).check(uri)
    assert info.value.status in (400, 403)


def test_allowed_and_normalised():
    assert AllowList(("s3://allowed",)).check("s3://allowed/a/./b.jpg") == "s3://allowed/a/b.jpg"
    assert AllowList(("memory://",)).check("memory://in/x.jpg") == "memory://in/x.jpg"


def test_symlink_out_of_a_file_root_is_refused(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    with pytest.raises(Problem) as info:
        AllowList((f"file://{root}/",)).check(f"file://{root}/escape/passwd")
    assert info.value.status == 403
    assert AllowList((f"file://{root}",)).check(f"file://{root}/ok.jpg") == f"file://{root}/ok.jpg"


# -- memory:// through an in-process server ----------------------------------------------------------
@pytest.fixture(scope="module")
def memory_server(model_root, tmp_path_factory):
    from werkzeug.serving import make_server

    mp = pytest.MonkeyPatch()
    for key, value in {
        "MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path_factory.mktemp("mem-cache")),
        "SOURCE_FACE_URI": "memory://faces/obama.jpg", "INPUT_URI_TEMPLATE": "memory://in/{provider}/{bucket}/{name}",
        "OUTPUT_URI": "memory://out/{provider}/{bucket}/{stem}-fused.jpg", "K_REVISION": "mem-1",
    }.items():
        mp.setenv(key, value)
    mp.delenv("ALLOWED_URI_PREFIXES", raising=False)
    import functions_framework

    app = functions_framework.create_app(target="fuse", source=str(Path(__file__).resolve().parents[1] / "function" / "main.py"))
    port = free_port()
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if requests.get(url + "/readyz", timeout=5).status_code == 200:
            break
        threading.Event().wait(0.1)
    yield url
    httpd.shutdown()
    mp.undo()


def test_memory_storage_events(memory_server):
    fs = fsspec.filesystem("memory")
    fs.pipe("/faces/obama.jpg", shared_file("images", "obama.jpg").read_bytes())
    fs.pipe("/in/minio/images/myphoto.jpg", shared_file("images", "two_people.jpg").read_bytes())
    payload = shared_file("testdata", "storage", "minio-webhook-object-created-put.json").read_text()
    for _ in range(2):
        r = requests.post(memory_server + "/", data=payload, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 200, r.text
    assert [o["status"] for o in r.json()["results"]] == ["duplicate"]
    produced = [p for p in fs.find("/out") if not p.endswith(".facefusion.json")]
    assert produced == ["/out/minio/images/myphoto-fused.jpg"]
    marker = json.loads(fs.cat("/out/minio/images/myphoto-fused.jpg.facefusion.json"))
    assert marker["input"].startswith("memory://in/minio/images/myphoto.jpg#") and marker["revision"] == "mem-1"
    assert fs.cat(produced[0])[:2] == b"\xff\xd8"


# -- s3:// against moto's S3 server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_s3():
    server_mod = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    # port 0: the kernel picks a free one as the server binds (a port found free earlier can be taken
    # by then, and a failed bind leaves start() waiting for good)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_s3_notification_against_local_s3(moto_s3, model_root, tmp_path):
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    fs = fsspec.filesystem("s3", endpoint_url=moto_s3, key="testing", secret="testing", client_kwargs={"region_name": "us-east-1"})
    import boto3

    client = boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    for bucket in ("mybucket", "faces", "out"):
        client.create_bucket(Bucket=bucket)
    fs.pipe("faces/obama.jpg", shared_file("images", "obama.jpg").read_bytes())
    fs.pipe("mybucket/HappyFace.jpg", shared_file("images", "biden.jpg").read_bytes())
    env = {
        **creds,
        "FSSPEC_S3": json.dumps({"endpoint_url": moto_s3, "key": "testing", "secret": "testing"}),
        "MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "cache"),
        "SOURCE_FACE_URI": "s3://faces/obama.jpg", "OUTPUT_URI": "s3://out/{provider}/{name}.fused.png",
        "ALLOWED_URI_PREFIXES": "s3://mybucket/,s3://faces/,s3://out/",
    }
    server = FunctionServer(env)
    try:
        payload = shared_file("testdata", "storage", "s3-object-created-put.json").read_text()
        statuses = []
        for _ in range(2):
            r = requests.post(server.url + "/", data=payload, headers={"Content-Type": "application/json"}, timeout=60)
            assert r.status_code == 200, r.text + server.logs()
            statuses.append(r.json()["results"][0]["status"])
            assert statuses[-1] != "failed", r.json()
        assert statuses == ["done", "duplicate"]
        fs.invalidate_cache()
        assert sorted(fs.find("out")) == ["out/s3/HappyFace.jpg.fused.png", "out/s3/HappyFace.jpg.fused.png.facefusion.json"]
        assert fs.cat("out/s3/HappyFace.jpg.fused.png")[:4] == b"\x89PNG"
    finally:
        server.stop()


def test_orphaned_temp_files_of_killed_writers_are_removed(tmp_path: Path):
    import os

    from function.storage import HOST, TMP_DIR, write_atomic

    tmp_dir = tmp_path / TMP_DIR
    tmp_dir.mkdir()
    dead = tmp_dir / f"out.jpg.{HOST}.999999999.{'a' * 32}.partial"
    alive = tmp_dir / f"out.jpg.{HOST}.{os.getpid()}.{'d' * 32}.partial"
    other_host = tmp_dir / f"out.jpg.elsewhere.1.{'e' * 32}.partial"
    for p in (dead, alive, other_host):
        p.write_bytes(b"half")
    write_atomic(f"file://{tmp_path}/out.jpg", b"whole", 10)
    assert (tmp_path / "out.jpg").read_bytes() == b"whole"
    assert not dead.exists() and alive.exists() and other_host.exists()


def test_s3_lease_is_a_conditional_put(moto_s3, monkeypatch):
    """On S3 the lease is exclusive through `If-None-Match: *` (s3fs `mode="create"`), across processes."""
    import boto3

    from function.leases import LEASE_SUFFIX, claim, release

    boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="leases")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": moto_s3, "key": "testing", "secret": "testing",
                                                   "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True})
    fs = fsspec.filesystem("s3")
    first = claim("s3://leases/out.jpg", ttl=60, timeout=10)
    with pytest.raises(Problem) as info:
        claim("s3://leases/out.jpg", ttl=60, timeout=10)
    assert info.value.status == 429 and info.value.code == "in-progress" and info.value.retry_after
    fs.rm_file("leases/out.jpg" + LEASE_SUFFIX)
    fs.pipe_file("leases/out.jpg" + LEASE_SUFFIX, json.dumps({"owner": "gone", "expires_at": 1}).encode())
    taken = claim("s3://leases/out.jpg", ttl=60, timeout=10)  # an expired lease is taken over
    assert json.loads(fs.cat_file("leases/out.jpg" + LEASE_SUFFIX))["owner"] == taken != first
    release("s3://leases/out.jpg", taken, timeout=10)
    assert not fs.exists("leases/out.jpg" + LEASE_SUFFIX)
