"""The model store: is a model set on the volume complete and unchanged?

The manifest's schema is in `manifest.py`; this module checks the files it names. A model set is refused as a whole when a file is missing or its size or SHA-256 differ from the
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
from pathlib import Path
from typing import Any

from .errors import ModelSetInvalid
from .files import atomic_write
from .manifest import ModelSet, read_manifest

log = logging.getLogger(__name__)

VERDICT_FILE = ".verified.json"
_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
        payload = json.dumps(self.entries, indent=1, sort_keys=True).encode()
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, payload)
                return
            except OSError:
                continue
        log.warning("could not store model verification verdicts in %s", [str(p) for p in self.paths])


def verify_model_set(model_set: ModelSet, cache_dir: Path | None = None) -> ModelSet:
    """Check every file of the set; hash only files whose size or mtime changed since the last check."""
    verdicts = VerdictCache(model_set.directory, cache_dir)
    changed = False
    for entry in model_set.models.values():
        try:
            stat = entry.path.stat()
        except OSError as exc:
            raise ModelSetInvalid(f"model file {entry.path.name} ({entry.role}) is missing") from exc
        if entry.size is not None and stat.st_size != entry.size:
            raise ModelSetInvalid(
                f"model file {entry.path.name} ({entry.role}) is {stat.st_size} bytes; the manifest says {entry.size}"
            )
        if verdicts.is_verified(entry.path, entry.sha256, stat):
            continue
        actual = sha256_file(entry.path)
        if actual != entry.sha256:
            raise ModelSetInvalid(
                f"model file {entry.path.name} ({entry.role}) has sha256 {actual}; the manifest says {entry.sha256}"
            )
        verdicts.remember(entry.path, entry.sha256, stat)
        changed = True
    if changed:
        verdicts.save()
    return model_set


def open_model_set(model_dir: Path, cache_dir: Path | None = None) -> ModelSet:
    """Read and verify the model set in `model_dir` (following a `current` symlink)."""
    return verify_model_set(read_manifest(model_dir), cache_dir)
