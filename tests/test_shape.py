"""The house rules that a user notices: one configuration parser with one failure policy, one manifest
schema, model kinds found through one table, a model set that appears after start, atomic writes, and
batch entries that fail alone."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import requests

from function.config import FunctionConfig
from pipeline import ConfigError, ModelSetInvalid, Settings, atomic_write, load_fuser, parse_manifest
from pipeline.models import InSwapper as InSwapperKind
from pipeline.sessions import provider_options
from warmup import Warmup

from .conftest import shared_file
from .server import FunctionServer

SHA = "0" * 64


@pytest.mark.parametrize(("raw", "expected"), [("off", False), ("no", False), ("0", False), ("OFF", False),
                                               ("on", True), ("true", True), ("", True)])
def test_one_spelling_of_true_and_false_everywhere(raw, expected, tmp_path):
    settings = Settings.from_env({"TRT_FP16": raw})
    assert settings.gpu.trt_fp16 is expected
    trt = provider_options(["TensorrtExecutionProvider"], tmp_path, settings.gpu)[0]
    assert trt["trt_fp16_enable"] is expected
    assert FunctionConfig.from_env({"REPLY_EVENTS": raw}).reply_events is expected


def test_bad_values_are_named_not_raised_at_import():
    config = FunctionConfig.from_env({"MAX_INFLIGHT": "two", "DRAIN_SECONDS": "-1", "REPLY_EVENTS": "maybe"})
    assert config.max_inflight == 2  # the default is used meanwhile
    assert len(config.problems) == 3 and "MAX_INFLIGHT" in config.problems[0]
    with pytest.raises(ConfigError, match=r"MAX_IMAGE_BYTES.*integer.*TRT_FP16"):
        Settings.from_env({"MAX_IMAGE_BYTES": "20MB", "TRT_FP16": "sometimes"})


def test_cpu_threads_is_a_count_or_this_process_share():
    assert Settings.from_env({}).cpu_threads == 0  # each native pool keeps its own default
    assert Settings.from_env({"CPU_THREADS": "3"}).cpu_threads == 3
    assert Settings.from_env({"CPU_THREADS": "Share"}).cpu_threads == 0  # a process alone: the defaults
    for bad in ("-1", "many"):
        with pytest.raises(ConfigError, match="CPU_THREADS"):
            Settings.from_env({"CPU_THREADS": bad})


def test_a_bad_setting_fails_readiness_with_the_reason_and_the_worker_keeps_serving(model_root, tmp_path):
    server = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"), "MAX_INFLIGHT": "lots",
                             "WARMUP": "perhaps", "VIDEO_NVENC": "sometimes"})
    try:
        ready = requests.get(server.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed" and "MAX_INFLIGHT" in body["reason"] and "WARMUP" in body["reason"]
        assert "VIDEO_NVENC" in body["reason"]  # the pipeline's video settings are named at start too
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        r = requests.post(server.url + "/", files={"source": b"x", "target": b"y"}, timeout=10)
        assert r.status_code == 503 and "MAX_INFLIGHT" in r.json()["detail"]
    finally:
        server.stop()
    # the probe's 503 is a WARNING (the warm-up logged the failure once, as ERROR); refused work is an ERROR
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    assert {line["severity"] for line in lines if line.get("path") == "/readyz"} == {"WARNING"}
    assert {line["severity"] for line in lines if line.get("path") == "/"} == {"ERROR"}


def _manifest(**models) -> dict:
    base = {"detector": {"file": "det.onnx", "sha256": SHA, "kind": "scrfd"},
            "recognizer": {"file": "rec.onnx", "sha256": SHA},
            "swapper": {"file": "swap.onnx", "sha256": SHA, "kind": "inswapper"}}
    base.update(models)
    return {"name": "n", "version": "v1", "models": {k: v for k, v in base.items() if v is not None}}


@pytest.mark.parametrize(("models", "message"), [
    ({"swapper": None}, "lacks the roles swapper"),
    ({"swapper": {"file": "swap.onnx", "sha256": SHA, "kind": "faceswap9000"}}, "does not handle"),
    ({"detector": {"file": "det.onnx", "sha256": SHA, "kind": "arcface"}}, "a recognizer, not a detector"),
    ({"swapper": {"file": "../swap.onnx", "sha256": SHA}}, "plain 'file' name"),
    ({"swapper": {"file": ".hidden.onnx", "sha256": SHA}}, "plain 'file' name"),
    ({"swapper": {"file": "swap.onnx", "sha256": "abc"}}, "64-hex-digit"),
    ({"swapper": {"file": "swap.onnx", "sha256": SHA, "input_size": [128]}}, "input_size"),
])
def test_one_manifest_schema_refuses_sets_that_cannot_serve(models, message, tmp_path):
    with pytest.raises(ModelSetInvalid, match=message):
        parse_manifest(_manifest(**models), tmp_path)


def test_roles_default_their_kind_and_extra_roles_of_known_kinds_are_accepted(tmp_path):
    model_set = parse_manifest(_manifest(swapper_hq={"file": "swap2.onnx", "sha256": SHA, "kind": "inswapper"}), tmp_path)
    assert model_set.models["recognizer"].kind == "arcface"
    assert model_set.models["swapper_hq"].category == "swapper"


def test_an_extra_role_loads_through_the_kind_table(model_root, tmp_path):
    """A second swapper declared in the manifest is built by its kind's class; no fusion code names it."""
    root = tmp_path / "models"
    shutil.copytree(model_root / "test", root / "v")
    manifest = json.loads((root / "v" / "manifest.json").read_text())
    manifest["models"]["swapper_b"] = dict(manifest["models"]["swapper"])
    (root / "v" / "manifest.json").write_text(json.dumps(manifest))
    fuser = load_fuser(Settings(model_path=root, model_version="v", cache_path=tmp_path / "c"))
    assert isinstance(fuser.models.role("swapper_b"), InSwapperKind)
    assert fuser.models.role("swapper_b") is not fuser.swapper


def test_a_model_set_that_appears_after_start_is_picked_up(model_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_WAIT_S", "0.1")
    root = tmp_path / "models"
    root.mkdir()
    warm = Warmup(settings=Settings(model_path=root, cache_path=tmp_path / "c"), exercise=False)
    warm.ensure_started()
    deadline = time.time() + 10
    while warm.readiness.state != "waiting" and time.time() < deadline:
        time.sleep(0.05)
    reason = warm.readiness.reason
    assert warm.readiness.state == "waiting" and "manifest.json is missing" in reason
    assert str(tmp_path) not in reason  # /readyz is public: no absolute paths
    shutil.copytree(model_root / "test", root / "test")
    os.symlink("test", root / "current")
    assert warm.readiness.ready_event.wait(30) and warm.readiness.ready, warm.readiness.as_dict()
    assert warm.readiness.reason == ""


def test_check_does_not_wait_for_a_missing_set(tmp_path):
    warm = Warmup(settings=Settings(model_path=tmp_path, cache_path=tmp_path / "c"), wait_for_models=False)
    warm.ensure_started()
    assert warm.readiness.ready_event.wait(10)
    assert warm.readiness.state == "failed" and "manifest.json is missing" in warm.readiness.reason


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    with pytest.raises(TypeError):
        atomic_write(target, object())  # type: ignore[arg-type]  # a write that fails half way
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_malformed_record_in_a_notification_fails_alone(model_root, tmp_path):
    store = tmp_path / "store"
    (store / "in" / "b").mkdir(parents=True)
    shutil.copy(shared_file("images", "two_people.jpg"), store / "in" / "b" / "ok.jpg")
    shutil.copy(shared_file("images", "obama.jpg"), store / "face.jpg")
    server = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"),
                             "SOURCE_FACE_URI": f"file://{store}/face.jpg", "INPUT_URI_TEMPLATE": f"file://{store}/in/{{bucket}}/{{name}}",
                             "OUTPUT_URI": f"file://{store}/out/{{stem}}.jpg", "ALLOWED_URI_PREFIXES": f"file://{store}/"})
    try:
        good = {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "ok.jpg", "eTag": "e1"}}}
        bad = {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}
        r = requests.post(server.url + "/", json={"EventName": "s3:ObjectCreated:Put", "Records": [bad, good]}, timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [o["status"] for o in results] == ["failed", "done"]
        assert results[0]["error"]["status"] == 400 and (store / "out" / "ok.jpg").is_file()
    finally:
        server.stop()


def test_a_failed_load_recovers_when_the_cause_is_fixed_and_names_no_paths(model_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_WAIT_S", "0.1")
    root = tmp_path / "models"
    shutil.copytree(model_root / "test", root / "test")
    os.symlink("test", root / "current")
    swap = root / "test" / "swap.onnx"
    good = swap.read_bytes()
    swap.write_bytes(good[:-10] + b"0123456789")  # same size, wrong hash
    warm = Warmup(settings=Settings(model_path=root, cache_path=tmp_path / "c"), exercise=False)
    warm.ensure_started()
    assert warm.readiness.ready_event.wait(20)
    reason = warm.readiness.reason
    assert warm.readiness.state == "failed" and "swap.onnx (swapper)" in reason and "trying again" in reason
    assert str(tmp_path) not in reason
    swap.write_bytes(good)
    deadline = time.time() + 20
    while not warm.readiness.ready and time.time() < deadline:
        time.sleep(0.05)
    assert warm.readiness.ready, warm.readiness.as_dict()


def test_sigterm_ends_a_worker_without_models_cleanly(tmp_path):
    """A worker whose models never loaded used to abort on SIGTERM (C++ terminate during teardown)."""
    server = FunctionServer({"MODEL_PATH": str(tmp_path / "empty"), "CACHE_PATH": str(tmp_path / "c"),
                             "DRAIN_SECONDS": "0"}, wait_ready=False)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(server.url + "/readyz", timeout=2).json().get("status") == "waiting":
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
    finally:
        server.stop()
    logs = server.log_path.read_text(errors="replace")
    assert "waiting for the model set" in logs
    assert "terminate called" not in logs and "Traceback" not in logs, logs
    assert server.proc.returncode == 0


def test_the_cold_start_watch_neither_spins_nor_outlives_a_final_failure(model_root, tmp_path, monkeypatch):
    """A failed load keeps ready_event set while it is retried; the observer must poll, not spin."""
    import threading
    from types import SimpleNamespace

    from function import observe

    monkeypatch.setenv("MODEL_WAIT_S", "30")
    root = tmp_path / "models"
    shutil.copytree(model_root / "test", root / "test")
    os.symlink("test", root / "current")
    (root / "test" / "swap.onnx").write_bytes(b"broken")  # fails verification, retried with back-off
    retrying = Warmup(settings=Settings(model_path=root, cache_path=tmp_path / "c"), exercise=False)
    retrying.ensure_started()
    assert retrying.readiness.ready_event.wait(20) and retrying.readiness.state == "failed"
    runtime = SimpleNamespace(warmup=retrying, config=SimpleNamespace(revision="t"))
    watch = threading.Thread(target=observe._watch_warmup, args=(runtime, time.time()), daemon=True)
    watch.start()
    time.sleep(1.0)

    def thread_cpu_s(tid: int) -> float:  # the watch's own CPU time, not the whole process's (the retries' own)
        with open(f"/proc/self/task/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    assert thread_cpu_s(watch.native_id) < 0.3  # the watch polls; it does not burn a core
    assert watch.is_alive()  # the retry may still succeed

    final = Warmup(problems=("MAX_INFLIGHT must be an integer",))
    final.ensure_started()
    assert final.readiness.done.wait(10) and final.readiness.state == "failed"
    runtime = SimpleNamespace(warmup=final, config=SimpleNamespace(revision="t"))
    watch = threading.Thread(target=observe._watch_warmup, args=(runtime, time.time()), daemon=True)
    watch.start()
    watch.join(5)
    assert not watch.is_alive()
