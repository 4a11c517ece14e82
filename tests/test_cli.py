"""`python -m pipeline` as a person would run it: results, and an exit code for every failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO, shared_file


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO,
        module: str = "pipeline") -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "MODEL_VERSION", "CACHE_PATH")}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def test_make_models_detect_and_fuse(tmp_path: Path, scrfd_path: Path, t1_path: Path):
    models = tmp_path / "models"
    made = run(["make-test-models", str(models), "--detector", str(scrfd_path)], module="devtools")
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "models", "out.png"]  # no temporaries left


def test_standin_detector_alone_serves_a_fusion(tmp_path: Path):
    """A stand-in set with the stand-in detector still runs end to end, and says detection is fake."""
    models = tmp_path / "models"
    made = run(["make-test-models", str(models), "--standin-detector"], module="devtools")
    assert made.returncode == 0, made.stderr
    assert "DETECTOR IS FAKE" in made.stdout
    img = tmp_path / "frame.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(img)
    fused = run(["fuse", str(img), str(img), "-o", str(tmp_path / "o.jpg")], {"MODEL_PATH": str(models)})
    assert fused.returncode == 0, fused.stderr
    assert json.loads(fused.stdout)["faces_swapped"] == 1


@pytest.fixture()
def cli_env(tmp_path: Path, model_root: Path) -> dict[str, str]:
    return {"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "cache")}


@pytest.fixture()
def obama() -> str:
    return str(shared_file("images", "obama.jpg"))


@pytest.mark.parametrize("extra, needle", [
    (["--quality", "0"], "quality must be between 1 and 100"),
    (["--quality", "101"], "quality must be between 1 and 100"),
    (["--faces", "index"], "needs a non-negative face index"),
    (["--faces", "index", "--index", "-1"], "needs a non-negative face index"),
    (["--faces", "index", "--index", "7"], "face index 7 does not exist"),  # found only after detection
    (["--faces", "reference"], "--faces reference needs --reference"),
    (["--threshold", "3"], "reference_threshold"),
    (["--index", "1"], "--index applies when --faces is index, not largest"),
    (["--faces", "all", "--threshold", "0.5"], "--threshold applies when --faces is reference, not all"),
    (["--reference", "ref.jpg"], "--reference applies when --faces is reference, not largest"),  # before it is read
    (["--format", "png"], "--format png disagrees with the output's extension .jpg"),
    (["--mask-padding", "50,0,50,0"], "mask_padding cuts away the whole face"),
    (["--min-face-size", "-5"], "min_face_size"),
])
def test_invalid_option_values_are_usage_errors(tmp_path, cli_env, obama, extra, needle):
    out = tmp_path / "out.jpg"
    proc = run(["fuse", obama, obama, "-o", str(out), *extra], cli_env)
    assert_one_line_error(proc, 2, needle)
    assert not out.exists()


def test_usage_errors_exit_2(tmp_path, cli_env, obama):
    missing_output = run(["fuse", obama, obama], cli_env)
    assert missing_output.returncode == 2 and "-o/--output" in missing_output.stderr
    assert run(["fuse", obama, obama, "-o", "x.jpg", "--faces", "nobody"], cli_env).returncode == 2
    assert run(["frobnicate"], cli_env).returncode == 2
    assert_one_line_error(run(["fuse", obama, obama, "-o", str(tmp_path / "out.txt")], cli_env), 2,
                          "unsupported output format 'txt'")
    assert_one_line_error(run(["detect", obama], {**cli_env, "TRT_FP16": "maybe"}), 2, "TRT_FP16")


def test_image_and_face_problems_exit_3(tmp_path, cli_env, obama, t1_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (50, 50, 50)).save(blank)
    assert_one_line_error(run(["fuse", str(blank), str(t1_path), "-o", str(tmp_path / "x.jpg")], cli_env), 3,
                          "no face")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    assert_one_line_error(run(["fuse", obama, str(text), "-o", str(tmp_path / "x.jpg")], cli_env), 3,
                          "not a supported image")
    assert_one_line_error(run(["detect", str(text)], cli_env), 3, "not a supported image")
    assert not (tmp_path / "x.jpg").exists()


def test_missing_model_set_exit_4_says_where_it_looked(tmp_path, obama):
    work = tmp_path / "elsewhere"
    work.mkdir()
    unset = run(["detect", obama], cwd=work)  # MODEL_PATH unset: ./models of the current folder
    assert_one_line_error(unset, 4, "manifest.json is missing", f"Looked in {work / 'models' / 'current'}",
                          "MODEL_PATH is not set", "./models relative to the current folder", str(work))
    given = run(["fuse", obama, obama, "-o", str(tmp_path / "o.jpg")], {"MODEL_PATH": str(tmp_path / "empty")})
    assert_one_line_error(given, 4, f"Looked in {tmp_path / 'empty' / 'current'}",
                          f"MODEL_PATH is {tmp_path / 'empty'}")


def test_file_problems_exit_5_before_the_fusion_runs(tmp_path, cli_env, obama):
    out = str(tmp_path / "out.jpg")
    assert_one_line_error(run(["fuse", str(tmp_path / "nope.jpg"), obama, "-o", out], cli_env), 5,
                          "cannot read the source", "No such file")
    assert_one_line_error(run(["fuse", obama, str(tmp_path), "-o", out], cli_env), 5,
                          "cannot read the target", "is a folder")
    assert_one_line_error(run(["fuse", obama, obama, "-o", out, "--faces", "reference", "--reference",
                               str(tmp_path / "ref.jpg")], cli_env), 5, "cannot read the reference")
    assert_one_line_error(run(["detect", str(tmp_path / "nope.jpg")], cli_env), 5, "cannot read the image")
    # unwritable outputs; with no model set at all, exit 5 (not 4) shows the check runs before loading
    no_models = {"MODEL_PATH": str(tmp_path / "no-models")}
    assert_one_line_error(run(["fuse", obama, obama, "-o", str(tmp_path / "missing" / "o.jpg")], no_models), 5,
                          "cannot write the output", "does not exist")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_one_line_error(run(["fuse", obama, obama, "-o", str(a_file / "o.jpg")], no_models), 5,
                          "cannot write the output", "is not a folder")
    assert_one_line_error(run(["fuse", obama, obama, "-o", str(tmp_path)], no_models), 5, "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no probe or partial file left


def test_output_is_replaced_whole(tmp_path, cli_env, obama, t1_path):
    out = tmp_path / "out.jpg"
    out.write_bytes(b"old")
    proc = run(["fuse", obama, str(t1_path), "-o", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).format == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out.jpg"]
