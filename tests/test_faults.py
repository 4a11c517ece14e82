"""Faults: failing and hanging stores, runtime out-of-memory, model files changed under a running
process. Each gives the documented status, a log line with the cause, and a worker that keeps serving."""

from __future__ import annotations

import json
import shutil
import time

import fsspec
import pytest
import requests

from .conftest import shared_file
from .fakefs import AliasedMemoryFS
from .inprocess import InProcessServer
from .server import FunctionServer


class FaultyFS(AliasedMemoryFS):
    """memory:// with switchable faults: raise on read, raise on write, or hang on read."""

    protocol = "faulty"
    store: dict = {}
    mode = "ok"

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._fault("read")
        return super().cat_file(path, start, end, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        self._fault("read" if "r" in mode else "write")
        return super()._open(path, mode, **kwargs)

    def pipe_file(self, path, value, **kwargs):
        self._fault("write")
        return super().pipe_file(path, value, **kwargs)

    def _fault(self, op: str) -> None:
        if FaultyFS.mode == f"fail-{op}":
            raise OSError(f"injected {op} failure")
        if FaultyFS.mode == f"hang-{op}":
            time.sleep(5)


@pytest.fixture(scope="module")
def faulty_server(model_root, tmp_path_factory):
    fsspec.register_implementation("faulty", FaultyFS, clobber=True)
    fs = FaultyFS()
    fs.pipe("/faces/obama.jpg", shared_file("images", "obama.jpg").read_bytes())
    fs.pipe("/in/biden.jpg", shared_file("images", "biden.jpg").read_bytes())
    srv = InProcessServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path_factory.mktemp("faults")),
                           "ALLOWED_URI_PREFIXES": "faulty://", "ALLOWED_OUTPUT_PREFIXES": "faulty://out/", "STORAGE_TIMEOUT_S": "1", "K_REVISION": "faults"})
    yield srv
    srv.stop()
    FaultyFS.mode = "ok"


def fuse_uris(server, output: str = "faulty://out/x.jpg") -> requests.Response:
    body = {"source": "faulty://faces/obama.jpg", "target": "faulty://in/biden.jpg", "output": output}
    return requests.post(server.url + "/", json=body, timeout=30)


def assert_still_serving(server) -> None:
    FaultyFS.mode = "ok"
    r = fuse_uris(server, "faulty://out/after.jpg")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("mode,status,code", [
    ("fail-write", 503, "storage-error"),
    ("fail-read", 503, "storage-error"),
    ("hang-read", 504, "storage-timeout"),
])
def test_store_faults(faulty_server, capsys, mode, status, code):
    FaultyFS.mode = mode
    r = fuse_uris(faulty_server)  # a hang answers 504 from STORAGE_TIMEOUT_S (1 s), not after the 5 s hang
    assert r.status_code == status and r.headers["Retry-After"]
    assert r.json()["type"].endswith(code)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert any(line["status"] == status and code in line.get("error", "") for line in lines)
    assert_still_serving(faulty_server)


def test_runtime_out_of_memory(faulty_server, capsys):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    swapper = faulty_server.module.RUNTIME.warmup.fuser.swapper
    real = swapper.session

    class OutOfMemory:
        def __getattr__(self, name):
            return getattr(real, name)

        def run(self, *args, **kwargs):
            raise RuntimeException("CUDA failure 2: out of memory; Failed to allocate memory for requested buffer")

    swapper.session = OutOfMemory()
    try:
        r = fuse_uris(faulty_server)
        assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["type"].endswith("runtime-failure")
        log = capsys.readouterr().out
        assert "out of memory" in log and "RuntimeException" in log
    finally:
        swapper.session = real
    assert_still_serving(faulty_server)


def test_model_file_replaced_under_a_running_process(model_root, tmp_path):
    """Serving continues from the sessions already loaded; the next start refuses the changed set."""
    models = tmp_path / "models"
    shutil.copytree(model_root / "test", models / "test")
    (models / "current").symlink_to("test")
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(tmp_path / "cache")}
    files = {"source": shared_file("images", "obama.jpg").read_bytes(), "target": shared_file("images", "biden.jpg").read_bytes()}
    server = FunctionServer(env)
    try:
        swap = models / "test" / "swap.onnx"
        swap.write_bytes(swap.read_bytes()[: swap.stat().st_size // 2])  # truncated in place
        assert requests.post(server.url + "/", files=files, timeout=60).status_code == 200
    finally:
        server.stop()
    restarted = FunctionServer(env)
    try:
        ready = requests.get(restarted.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and "swap.onnx" in ready.json()["reason"]
        r = requests.post(restarted.url + "/", files=files, timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert "swap.onnx" in restarted.logs()
    finally:
        restarted.stop()


def test_damaged_cache_artefact_is_rebuilt(model_root, tmp_path):
    cache = tmp_path / "cache"
    env = {"MODEL_PATH": str(model_root), "CACHE_PATH": str(cache)}
    FunctionServer(env).stop()
    graph = next(cache.glob("graphs/*/swapper.onnx"))
    graph.write_bytes(b"not a graph")
    server = FunctionServer(env)
    try:
        assert requests.get(server.url + "/readyz", timeout=5).json()["status"] == "ready"
    finally:
        server.stop()
