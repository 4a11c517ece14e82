"""`python -m devtools`: the newcomer's first command (serve) and the stand-in model writer."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from PIL import Image

from devtools.__main__ import Failure, ensure_model_set
from devtools.standins import arcface_model, write_test_models

from .conftest import REPO, SCRFD, SHARED
from .server import CONFIG_VARS, free_port


def devtools(args: list[str], cwd: Path = REPO, **popen) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    return subprocess.run([sys.executable, "-m", "devtools", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, **popen)


def _images() -> tuple[bytes, bytes]:
    """Two real photographs when ../shared is there (the set then has the real SCRFD), else noise,
    which the stand-in detector finds its one fixed face in."""
    if (SHARED / "images" / "obama.jpg").is_file() and SCRFD.is_file():
        return (SHARED / "images" / "obama.jpg").read_bytes(), (SHARED / "images" / "biden.jpg").read_bytes()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue(), buf.getvalue()


def test_serve_from_nothing_writes_standins_says_so_and_serves(tmp_path: Path):
    """The README's first command, run from another folder with an empty MODEL_PATH: ready, and fusing."""
    port = free_port()
    models = tmp_path / "models"
    env = {**{k: v for k, v in os.environ.items() if k not in CONFIG_VARS}, "MODEL_PATH": str(models),
           "CACHE_PATH": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "devtools", "serve", "--port", str(port), "--host", "127.0.0.1"],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        status = None
        while time.time() < deadline and status != 200:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(requests.RequestException):
                status = requests.get(url + "/readyz", timeout=2).status_code
            time.sleep(0.2)
        assert status == 200, log_path.read_text()
        source, target = _images()
        r = requests.post(url + "/", files={"source": ("s.jpg", source), "target": ("t.jpg", target)}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log_path.read_text()
    assert "STAND-IN MODELS" in out and "NOT real face swaps" in out
    assert f"warmup prefetch default --model-path {models} --current" in out
    assert os.readlink(models / "current") == "standin"
    manifest = json.loads((models / "standin" / "manifest.json").read_text())
    assert manifest["models"]["swapper"]["kind"] == "inswapper-standin"


def test_serve_leaves_an_existing_set_alone(tmp_path: Path, capsys):
    write_test_models(tmp_path / "models", version="v1", detector=None)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "models" / "v1").iterdir()}
    ensure_model_set(tmp_path / "models", "current")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "models" / "v1").iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["current", "v1"]
    said = capsys.readouterr().out
    assert "STAND-IN MODELS" in said and "DETECTOR IS FAKE" in said  # a stand-in set is announced every time


def test_serve_with_a_named_version_writes_it_without_current(tmp_path: Path):
    ensure_model_set(tmp_path / "models", "v5")
    assert (tmp_path / "models" / "v5" / "manifest.json").is_file()
    assert not (tmp_path / "models" / "current").exists()


def test_serve_refuses_a_folder_with_files_but_no_manifest(tmp_path: Path):
    (tmp_path / "models" / "current").mkdir(parents=True)
    (tmp_path / "models" / "current" / ".det.onnx.partial").write_bytes(b"half")
    with pytest.raises(Failure, match="no manifest.json") as caught:
        ensure_model_set(tmp_path / "models", "current")
    assert caught.value.code == 1


def test_make_test_models_without_detector_uses_the_shared_one_or_says_detection_is_fake(tmp_path: Path):
    made = subprocess.run([sys.executable, str(REPO / "devtools"), "make-test-models", "m", "--version", "v1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # from another folder
    assert made.returncode == 0, made.stderr
    kind = json.loads((tmp_path / "m" / "v1" / "manifest.json").read_text())["models"]["detector"]["kind"]
    if SCRFD.is_file():
        assert kind == "scrfd" and f"detector: {SCRFD} (real SCRFD" in made.stdout
    else:
        assert kind == "scrfd-standin" and "detection is FAKE" in made.stdout
    assert os.readlink(tmp_path / "m" / "current") == "v1"


def test_make_test_models_refuses_a_bad_detector_and_leaves_nothing(tmp_path: Path):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    other_model = tmp_path / "arcface.onnx"
    onnx.save(arcface_model(), str(other_model))
    cases = [(tmp_path / "missing.onnx", "no such file"), (tmp_path, "is a folder"),
             (not_onnx, "not an ONNX model"), (other_model, "not an SCRFD detector")]
    for detector, message in cases:
        proc = devtools(["make-test-models", str(tmp_path / "out" / "models"), "--detector", str(detector)])
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()


def test_make_test_models_refuses_to_overwrite_and_bad_versions(tmp_path: Path):
    assert devtools(["make-test-models", str(tmp_path / "m"), "--standin-detector"]).returncode == 0
    again = devtools(["make-test-models", str(tmp_path / "m"), "--standin-detector"])
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = devtools(["make-test-models", str(tmp_path / "n"), "--version", "../x"])
    assert bad.returncode == 2 and "plain folder name" in bad.stderr
    assert not (tmp_path / "n").exists()
    unwritable = devtools(["make-test-models", str(tmp_path / "m" / "standin" / "det.onnx" / "x")])
    assert unwritable.returncode == 1 and "cannot write" in unwritable.stderr and "Traceback" not in unwritable.stderr
