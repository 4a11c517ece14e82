"""Prefetch, prepare and readiness: what an init container and a starting pod do."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
import requests

from devtools.standins import write_test_models
from pipeline import manifest_document, parse_manifest, sha256_file
from warmup.prefetch import PrefetchError, Progress, prefetch

from .conftest import REPO
from .server import FunctionServer

FILES = ["det.onnx", "enhance.onnx", "rec.onnx", "swap.onnx"]


@pytest.fixture(scope="module")
def source_set(tmp_path_factory, scrfd_path) -> Path:
    root = tmp_path_factory.mktemp("published")
    write_test_models(root, detector=scrfd_path, version="v1")
    return root / "v1"


def quiet() -> Progress:
    return Progress(stream=None)


def assert_installed(target: Path, source: Path) -> None:
    manifest = json.loads((target / "manifest.json").read_text())
    for spec in manifest["models"].values():
        assert sha256_file(target / spec["file"]) == spec["sha256"] == sha256_file(source / spec["file"])
    assert not list(target.glob(".*.partial"))


def test_prefetch_from_file_uri(tmp_path, source_set):
    result = prefetch(f"file://{source_set}", tmp_path / "models", make_current=True, progress=quiet())
    assert sorted(result.copied) == FILES and result.version == "v1"
    assert_installed(tmp_path / "models" / "v1", source_set)
    assert os.readlink(tmp_path / "models" / "current") == "v1"
    again = prefetch(f"file://{source_set}", tmp_path / "models", progress=quiet())
    assert again.copied == [] and sorted(again.reused) == FILES


def test_prefetch_from_memory_uri(tmp_path, source_set):
    fs = fsspec.filesystem("memory")
    for path in source_set.iterdir():
        fs.pipe(f"/published/v7/{path.name}", path.read_bytes())
    result = prefetch("memory://published/v7", tmp_path / "models", version="v7", progress=quiet())
    assert sorted(result.copied) == FILES
    assert_installed(tmp_path / "models" / "v7", source_set)


def test_corrupted_source_fails_naming_the_file_and_leaves_nothing(tmp_path, source_set):
    bad = tmp_path / "bad"
    shutil.copytree(source_set, bad)
    data = bytearray((bad / "swap.onnx").read_bytes())
    data[100] ^= 0xFF
    (bad / "swap.onnx").write_bytes(bytes(data))
    with pytest.raises(PrefetchError, match=r"swap\.onnx.*does not match"):
        prefetch(f"file://{bad}", tmp_path / "models", progress=quiet())
    target = tmp_path / "models" / "v1"
    assert not (target / "swap.onnx").exists() and not (target / "manifest.json").exists()
    assert not list(target.glob(".*partial"))
    assert not list((tmp_path / "models").glob(".prefetch-*"))  # the lock lives only while a run holds it


def test_killed_download_resumes(tmp_path, source_set):
    target = tmp_path / "models" / "v1"
    target.mkdir(parents=True)
    half = (source_set / "rec.onnx").read_bytes()
    (target / ".rec.onnx.partial").write_bytes(half[: len(half) // 2])
    (target / ".swap.onnx.partial").write_bytes(b"garbage from another run")
    result = prefetch(f"file://{source_set}", tmp_path / "models", progress=quiet())
    assert result.resumed == ["rec.onnx"]
    assert "swap.onnx" in result.copied  # a wrong partial is thrown away and copied again
    assert_installed(target, source_set)


def test_concurrent_prefetches_copy_once(tmp_path, source_set):
    cmd = [sys.executable, "-m", "warmup", "prefetch", f"file://{source_set}", "--model-path", str(tmp_path / "models")]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(len(r["copied"]) for r in results) == [0, 4]
    assert sorted(len(r["reused"]) for r in results) == [0, 4]
    assert_installed(tmp_path / "models" / "v1", source_set)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["v1"]  # no lock file left


def _internet() -> bool:
    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _offline_default(model_path: Path) -> subprocess.CompletedProcess:
    if _internet():
        pytest.skip("this machine reaches the internet; the default set would really be downloaded")
    return subprocess.run([sys.executable, "-m", "warmup", "prefetch", "default", "--model-path", str(model_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_default_set_fails_fast_without_internet_and_leaves_nothing(tmp_path):
    proc = _offline_default(tmp_path / "m")
    assert proc.returncode == 1
    assert "could be reached" in proc.stderr and "no internet" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()  # no model root, version folder, lock file or archive partial
    (tmp_path / "empty").mkdir()
    assert _offline_default(tmp_path / "empty").returncode == 1
    assert list((tmp_path / "empty").iterdir()) == []


def test_failed_default_prefetch_keeps_a_complete_set(tmp_path, source_set):
    models = tmp_path / "models"
    prefetch(f"file://{source_set}", models, make_current=True, progress=quiet())
    before = _snapshot(models)
    assert _offline_default(models).returncode == 1
    assert sorted(p.name for p in models.iterdir()) == ["current", "v1"]
    assert _snapshot(models) == before and os.readlink(models / "current") == "v1"


def _publish(folder: Path, source_set: Path, edit) -> str:
    shutil.copytree(source_set, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return f"file://{folder}"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["models"].pop("swapper"), "lacks the roles swapper"),
    (lambda m: m["models"]["swapper"].update(kind="faceswap9000"), "kind 'faceswap9000', which this version does not handle"),
    (lambda m: m["models"]["recognizer"].update(kind="inswapper"), "a swapper, not a recognizer"),
    (lambda m: m["models"]["swapper"].update(file="../swap.onnx"), "needs a plain 'file' name"),
    (lambda m: m["models"]["swapper"].update(file=".swap.onnx"), "needs a plain 'file' name"),
    (lambda m: m["models"]["detector"].update(sha256="abc"), "64-hex-digit sha256"),
    (lambda m: m.pop("models"), "has no 'models' object"),
])
def test_prefetch_checks_the_manifest_with_the_pipelines_parser_before_copying(tmp_path, source_set, edit, message):
    source = _publish(tmp_path / "published", source_set, edit)
    with pytest.raises(PrefetchError, match=re.escape(message)):
        prefetch(source, tmp_path / "models", progress=quiet())
    assert not (tmp_path / "models").exists()  # nothing copied, no folder made
    proc = subprocess.run([sys.executable, "-m", "warmup", "prefetch", source, "--model-path", str(tmp_path / "m")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


def test_installed_manifest_has_the_one_schema(tmp_path, source_set):
    def decorate(manifest):
        manifest["models"]["swapper"].update(urls=["https://example.invalid/swap.onnx"], note="published by CI")
        manifest["comment"] = "not part of the schema"

    source = _publish(tmp_path / "published", source_set, decorate)
    prefetch(source, tmp_path / "models", version="v2", progress=quiet())
    installed = json.loads((tmp_path / "models" / "v2" / "manifest.json").read_text())
    published = json.loads((source_set / "manifest.json").read_text())
    assert installed == manifest_document(published["name"], "v2", published["models"])
    parse_manifest(installed, tmp_path / "models" / "v2")


def test_missing_source_file_fails_naming_it_and_cleans_up(tmp_path, source_set):
    published = tmp_path / "published"
    shutil.copytree(source_set, published)
    (published / "swap.onnx").unlink()
    with pytest.raises(PrefetchError, match=r"swap\.onnx: copying from .* failed"):
        prefetch(f"file://{published}", tmp_path / "models", progress=quiet())
    target = tmp_path / "models" / "v1"
    assert not (target / "manifest.json").exists()
    assert not [p for p in target.iterdir() if p.name.endswith(".partial")]
    assert not list((tmp_path / "models").glob(".prefetch-*"))


def test_model_path_defaults_to_the_environment(tmp_path, source_set):
    env = {**os.environ, "MODEL_PATH": str(tmp_path / "from-env")}
    proc = subprocess.run([sys.executable, "-m", "warmup", "prefetch", f"file://{source_set}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_installed(tmp_path / "from-env" / "v1", source_set)


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_prepare_then_start_builds_nothing_new(tmp_path, source_set):
    prefetch(f"file://{source_set}", tmp_path / "models", make_current=True, progress=quiet())
    env = {**os.environ, "MODEL_PATH": str(tmp_path / "models"), "CACHE_PATH": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "warmup", "prepare"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    built = json.loads(proc.stdout)["built"]
    assert any("emap" in b for b in built) and sum("optimised graph" in b for b in built) == 4
    before = _snapshot(tmp_path / "cache")
    server = FunctionServer({"MODEL_PATH": str(tmp_path / "models"), "CACHE_PATH": str(tmp_path / "cache")})
    try:
        assert requests.get(server.url + "/readyz", timeout=5).json()["status"] == "ready"
        after = {k: v for k, v in _snapshot(tmp_path / "cache").items() if not k.startswith("server-")}
        assert after == before
        assert "built" not in server.logs()
    finally:
        server.stop()


def test_readiness_is_503_until_warm(tmp_path, scrfd_path):
    """A big swapper makes the first start slow (emap side file, optimised graphs): /readyz says so."""
    write_test_models(tmp_path / "models", detector=scrfd_path, enhancer=False, pad_mb={"swapper": 300})
    server = FunctionServer({"MODEL_PATH": str(tmp_path / "models"), "CACHE_PATH": str(tmp_path / "cache")}, wait_ready=False)
    try:
        seen = []
        deadline = time.time() + 120
        while time.time() < deadline:
            try:  # loading a 300 MB set holds the GIL: on a slow or busy machine an answer can take seconds
                r = requests.get(server.url + "/readyz", timeout=30)
            except requests.RequestException:
                time.sleep(0.05)
                continue
            seen.append((r.status_code, r.json()["status"]))
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert seen[0][0] == 503 and seen[0][1] in ("starting", "loading", "warming")
        assert seen[-1] == (200, "ready")
        timings = requests.get(server.url + "/readyz", timeout=5).json()["timings_s"]
        assert {"model_load", "warmup", "cold_start"} <= set(timings)
        # the models loaded while the web stack was imported (warmup.prestart), not after it, and the cold
        # start counts until the process could answer (its app built), not just until the models were
        assert timings["load_start"] < timings["app_built"] <= timings["cold_start"]
        files = {"source": (REPO.parent / "shared" / "images" / "obama.jpg").read_bytes(),
                 "target": (REPO.parent / "shared" / "images" / "biden.jpg").read_bytes()}
        assert requests.post(server.url + "/", files=files, timeout=60).status_code == 200
    finally:
        server.stop()


def test_prefetch_over_http(tmp_path, source_set):
    """The https:// path (fsspec's HTTP filesystem) against a loopback web server, resuming with ranges."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(source_set.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/{source_set.name}"
        result = prefetch(base, tmp_path / "models", progress=quiet())
        assert sorted(result.copied) == FILES
        assert_installed(tmp_path / "models" / "v1", source_set)
    finally:
        httpd.shutdown()


def test_the_cold_start_clock_starts_with_the_process_not_with_the_import():
    """`cold_start` (in /readyz, the metric and the span) counts the interpreter and the imports too."""
    code = ("import time; time.sleep(0.6); t = time.time(); import warmup; "
            "print(t - warmup.PROCESS_START)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert 0.6 <= float(out.stdout.strip()) < 30


def test_a_warm_up_started_before_the_app_is_adopted_and_its_metrics_recorded(model_root, tmp_path, monkeypatch):
    """`python -m function.serve` starts loading before it imports the app; the app then takes that
    warm-up over instead of loading a second time, and the ready hooks it adds afterwards (the metrics)
    still see the cold start, even when the models were ready first."""
    import warmup
    from function.runtime import Runtime
    from warmup import Warmup, prestart

    monkeypatch.setattr(warmup, "_PRESTARTED", [])  # whatever happens here stays here
    monkeypatch.setenv("MODEL_PATH", str(model_root))
    monkeypatch.setenv("CACHE_PATH", str(tmp_path / "cache"))
    early = prestart(Warmup())
    assert not early.wait(1)  # loaded or not, not ready before the app is built: nothing could answer
    runtime = Runtime.from_env()
    assert runtime.warmup is early
    assert Runtime.from_env().warmup is not early  # adopted once; another runtime builds its own
    runtime.warmup.app_built()
    assert early.wait(120), early.readiness.reason
    assert runtime.fuser() is early.fuser
    seen: list[dict] = []
    runtime.warmup.add_ready_hook(lambda readiness: seen.append(dict(readiness.timings_s)))
    assert len(seen) == 1 and seen[0]["cold_start"] >= seen[0]["app_built"] > 0 and seen[0]["model_load"] > 0


def test_a_ready_hook_that_fails_after_the_warm_up_leaves_the_process_not_ready_with_the_reason(model_root, tmp_path):
    """A hook added once the models are ready (the app imported after a fast warm-up) runs in the
    importing thread; its failure must read as the warm-up's would, not crash the import."""
    from pipeline import Settings
    from warmup import Warmup

    warm = Warmup(settings=Settings.from_env({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c")}))
    warm.ensure_started()
    assert warm.wait(120), warm.readiness.reason
    warm.add_ready_hook(lambda readiness: 1 / 0)
    assert warm.readiness.state == "failed" and "ZeroDivisionError" in warm.readiness.reason


def test_importing_the_function_leaves_the_libraries_of_other_paths_for_later():
    """Cold start: PyAV (FFmpeg, the first clip), fsspec (the first storage call), requests (the first
    reply event) and onnx (preparing graphs) are imported where they are used, not by every start."""
    code = ("import sys, function.main, function.serve; "
            "print(','.join(m for m in ('av', 'fsspec', 'requests', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def test_reading_settings_loads_no_inference_library_and_every_pipeline_name_resolves():
    """The pipeline package imports its names on first use: a process that only reads settings (the
    WORKERS supervisor) loads neither numpy, OpenCV nor ONNX Runtime; every name the package exports
    still imports, and a name it does not export is an AttributeError, not a silent None."""
    code = ("import sys, function.config, function.serve, pipeline.config; "
            "print(','.join(m for m in ('numpy', 'cv2', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""
    import pipeline

    assert sorted(pipeline.__all__) == sorted(pipeline._EXPORTS)
    assert all(getattr(pipeline, name) is not None for name in pipeline.__all__)
    assert pipeline.Fuser.__module__ == "pipeline.fuser" and pipeline.FACE_MODES
    with pytest.raises(AttributeError):
        pipeline.no_such_name  # noqa: B018


def test_a_failure_inside_a_lazily_imported_module_keeps_its_message(monkeypatch):
    """An AttributeError raised while a submodule imports (a library of the wrong version, say) would read
    as "cannot import name" with no cause; it names the module and the cause instead."""
    import pipeline

    def broken(name, package=None):
        raise AttributeError("module 'numpy' has no attribute 'float_'")

    monkeypatch.setitem(pipeline._EXPORTS, "Broken", "broken_module")
    monkeypatch.setattr(pipeline, "import_module", broken)
    with pytest.raises(ImportError, match=r"pipeline\.broken_module for 'Broken' failed: .*numpy.*float_"):
        from pipeline import Broken  # noqa: F401
