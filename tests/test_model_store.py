"""The model store refuses broken sets by name and does not re-hash unchanged files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from devtools.standins import write_test_models
from pipeline import ModelSetInvalid, Settings, load_fuser
from pipeline.model_store import VERDICT_FILE, open_model_set


@pytest.fixture()
def model_copy(tmp_path: Path, model_root: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(model_root / "test", dst / "test")
    os.symlink("test", dst / "current")
    return dst


def test_missing_file_is_named(model_copy: Path, tmp_path: Path):
    (model_copy / "test" / "rec.onnx").unlink()
    with pytest.raises(ModelSetInvalid, match=r"rec\.onnx.*missing"):
        load_fuser(Settings(model_path=model_copy, cache_path=tmp_path / "c"))


def test_wrong_hash_is_named(model_copy: Path, tmp_path: Path):
    path = model_copy / "test" / "swap.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelSetInvalid, match=r"swap\.onnx.*sha256"):
        open_model_set(model_copy / "current", tmp_path / "c")


def test_missing_manifest_and_missing_role(tmp_path: Path, model_copy: Path):
    with pytest.raises(ModelSetInvalid, match="manifest.json is missing"):
        open_model_set(tmp_path / "nowhere")
    manifest = model_copy / "test" / "manifest.json"
    raw = json.loads(manifest.read_text())
    del raw["models"]["swapper"]
    manifest.write_text(json.dumps(raw))
    with pytest.raises(ModelSetInvalid, match="swapper"):
        open_model_set(model_copy / "test")


def test_verdict_is_remembered_and_invalidated_by_changes(model_copy: Path, tmp_path: Path):
    """A verified file is trusted while size and mtime hold; a changed mtime forces a re-hash."""
    set_dir = model_copy / "test"
    open_model_set(set_dir, tmp_path / "c")
    assert (set_dir / VERDICT_FILE).is_file()
    path = set_dir / "rec.onnx"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size; restore the mtime: the verdict still holds, so no re-hash happens
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    open_model_set(set_dir, tmp_path / "c")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(ModelSetInvalid, match=r"rec\.onnx"):
        open_model_set(set_dir, tmp_path / "c")


def test_unwritable_model_dir_keeps_verdict_in_cache(tmp_path: Path, scrfd_path: Path):
    """Production mounts the models read-only: the verdict then goes to the cache folder."""
    root = tmp_path / "ro"
    write_test_models(root, detector=scrfd_path, enhancer=False)
    (root / "test" / VERDICT_FILE).mkdir()  # a folder where the file would go: writing there fails, even as root
    open_model_set(root / "current", tmp_path / "cache")
    assert list((tmp_path / "cache" / "verdicts").glob("*.json"))


def test_emap_side_file_is_built_once(tmp_path: Path, model_root: Path):
    cache = tmp_path / "cache"
    first = load_fuser(Settings(model_path=model_root, cache_path=cache))
    assert any("emap" in line for line in first.load_log)
    assert list((cache / "emap").glob("*.npy"))
    second = load_fuser(Settings(model_path=model_root, cache_path=cache))
    assert second.load_log == []
    assert (second.swapper.emap == first.swapper.emap).all()
