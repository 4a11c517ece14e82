"""`python -m pipeline` as a person would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import REPO, shared_file


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_make_models_detect_and_fuse(tmp_path: Path, scrfd_path: Path, t1_path: Path):
    models = tmp_path / "models"
    made = run(["make-test-models", str(models), "--detector", str(scrfd_path)])
    assert made.returncode == 0, made.stderr
    assert "NOT real face swaps" in made.stdout
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(tmp_path / "cache")}
    detected = run(["detect", str(t1_path)], env)
    assert detected.returncode == 0, detected.stderr
    assert len(json.loads(detected.stdout)["faces"]) == 6
    out = tmp_path / "out.png"
    fused = run(["fuse", str(shared_file("images", "obama.jpg")), str(t1_path), "-o", str(out), "--faces", "all"], env)
    assert fused.returncode == 0, fused.stderr
    assert json.loads(fused.stdout)["faces_swapped"] == 6
    assert Image.open(out).format == "PNG"


def test_standin_detector_alone_serves_a_fusion(tmp_path: Path):
    """make-test-models without --detector still gives a set the service can run end to end."""
    models = tmp_path / "models"
    assert run(["make-test-models", str(models)]).returncode == 0
    img = tmp_path / "frame.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(img)
    fused = run(["fuse", str(img), str(img), "-o", str(tmp_path / "o.jpg")], {"MODEL_PATH": str(models)})
    assert fused.returncode == 0, fused.stderr
    assert json.loads(fused.stdout)["faces_swapped"] == 1


def test_exit_codes(tmp_path: Path, model_root: Path, t1_path: Path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (50, 50, 50)).save(blank)
    env = {"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "cache")}
    no_face = run(["fuse", str(blank), str(t1_path), "-o", str(tmp_path / "x.jpg")], env)
    assert no_face.returncode == 3 and "no face" in no_face.stderr
    broken = run(["detect", str(t1_path)], {"MODEL_PATH": str(tmp_path / "empty")})
    assert broken.returncode == 4 and "manifest.json is missing" in broken.stderr
