"""The model store: `$MODEL_PATH/<version>/manifest.json` and the weights it names.

A model set is refused as a whole when a file is missing or its size or SHA-256 differ from the
manifest, with a message that names the file. Hashing 700 MB on every cold start would cost seconds,
so a verdict is remembered per file, keyed by (size, mtime_ns, sha256 expected): a file that was
verified once and has not changed since is trusted without re-reading it. The verdict lives beside
the files when that folder is writable (the prefetch job writes it there), else in the cache folder
(production mounts the model volume read-only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelSetInvalid

log = logging.getLogger(__name__)

ROLES_REQUIRED = ("detector", "recognizer", "swapper")
ROLES_OPTIONAL = ("enhancer",)
VERDICT_FILE = ".verified.json"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelEntry:
    """One role of a model set, as the manifest describes it."""

    role: str
    path: Path
    sha256: str
    kind: str
    input_size: tuple[int, int] | None = None
    size: int | None = None


@dataclass(frozen=True)
class ModelSet:
    """A verified model set: every entry exists and matches its manifest."""

    name: str
    version: str
    directory: Path
    models: dict[str, ModelEntry] = field(default_factory=dict)

    def get(self, role: str) -> ModelEntry | None:
        return self.models.get(role)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_entry(role: str, raw: Any, directory: Path) -> ModelEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("file"), str) or not raw.get("file"):
        raise ModelSetInvalid(f"manifest entry {role!r} needs a 'file'")
    name = raw["file"]
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ModelSetInvalid(f"manifest entry {role!r}: file {name!r} must stay inside the model set")
    sha = str(raw.get("sha256", "")).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelSetInvalid(f"manifest entry {role!r} ({name}) needs a 64-hex-digit sha256")
    size = raw.get("input_size")
    input_size = (int(size[0]), int(size[1])) if isinstance(size, list) and len(size) == 2 else None
    nbytes = raw.get("size")
    return ModelEntry(
        role=role,
        path=directory / name,
        sha256=sha,
        kind=str(raw.get("kind", role)),
        input_size=input_size,
        size=int(nbytes) if isinstance(nbytes, int) else None,
    )


def read_manifest(directory: Path) -> ModelSet:
    """Parse the manifest of the set in `directory` (no file checks yet)."""
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ModelSetInvalid(f"no model set at {directory}: {manifest_path} is missing")
    try:
        raw = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSetInvalid(f"{manifest_path} cannot be read: {exc}") from exc
    models_raw = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models_raw, dict):
        raise ModelSetInvalid(f"{manifest_path} has no 'models' object")
    missing_roles = [role for role in ROLES_REQUIRED if role not in models_raw]
    if missing_roles:
        raise ModelSetInvalid(f"{manifest_path} lacks the roles {', '.join(missing_roles)}")
    models = {
        role: _parse_entry(role, models_raw[role], directory)
        for role in (*ROLES_REQUIRED, *ROLES_OPTIONAL)
        if role in models_raw
    }
    return ModelSet(
        name=str(raw.get("name", directory.name)),
        version=str(raw.get("version", directory.resolve().name)),
        directory=directory,
        models=models,
    )


class VerdictCache:
    """Remembers which files were verified, keyed by file name, size, mtime and expected hash.

    Shared by the serving start (verify_model_set) and the prefetch job, which hashes while it copies
    and records its verdicts so that the first start does not hash 700 MB again."""

    def __init__(self, model_dir: Path, cache_dir: Path | None) -> None:
        self.paths = [model_dir / VERDICT_FILE]
        if cache_dir is not None:
            key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
            self.paths.append(cache_dir / "verdicts" / f"{key}.json")
        self.entries: dict[str, dict[str, Any]] = {}
        for path in self.paths:
            try:
                loaded = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(loaded, dict):
                self.entries.update(loaded)

    @staticmethod
    def _key(sha256: str, stat: os.stat_result) -> dict[str, Any]:
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}

    def is_verified(self, path: Path, sha256: str, stat: os.stat_result | None = None) -> bool:
        return self.entries.get(path.name) == self._key(sha256, stat or path.stat())

    def remember(self, path: Path, sha256: str, stat: os.stat_result | None = None) -> None:
        self.entries[path.name] = self._key(sha256, stat or path.stat())

    def save(self) -> None:
        """Write the verdicts to the first writable location; failing that, keep them in memory."""
        payload = json.dumps(self.entries, indent=1, sort_keys=True)
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verdict-")
                with os.fdopen(fd, "w") as fh:
                    fh.write(payload)
                os.replace(tmp, path)
                return
            except OSError:
                continue
        log.warning("could not store model verification verdicts in %s", [str(p) for p in self.paths])


def verify_model_set(model_set: ModelSet, cache_dir: Path | None = None, force: bool = False) -> ModelSet:
    """Check every file of the set; hash only files whose size or mtime changed since the last check."""
    verdicts = VerdictCache(model_set.directory, cache_dir)
    changed = False
    for entry in model_set.models.values():
        try:
            stat = entry.path.stat()
        except OSError as exc:
            raise ModelSetInvalid(f"model file {entry.path} ({entry.role}) is missing") from exc
        if entry.size is not None and stat.st_size != entry.size:
            raise ModelSetInvalid(
                f"model file {entry.path} ({entry.role}) is {stat.st_size} bytes; the manifest says {entry.size}"
            )
        if not force and verdicts.is_verified(entry.path, entry.sha256, stat):
            continue
        actual = sha256_file(entry.path)
        if actual != entry.sha256:
            raise ModelSetInvalid(
                f"model file {entry.path} ({entry.role}) has sha256 {actual}; the manifest says {entry.sha256}"
            )
        verdicts.remember(entry.path, entry.sha256, stat)
        changed = True
    if changed:
        verdicts.save()
    return model_set


def open_model_set(model_dir: Path, cache_dir: Path | None = None) -> ModelSet:
    """Read and verify the model set in `model_dir` (following a `current` symlink)."""
    return verify_model_set(read_manifest(model_dir), cache_dir)


def write_manifest(directory: Path, name: str, version: str, entries: dict[str, dict[str, Any]]) -> Path:
    """Write a manifest for files already in `directory`, hashing each one (used by tooling)."""
    models: dict[str, dict[str, Any]] = {}
    for role, spec in entries.items():
        path = directory / spec["file"]
        models[role] = {**spec, "sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = directory / "manifest.json"
    manifest.write_text(json.dumps({"name": name, "version": version, "models": models}, indent=2) + "\n")
    return manifest
