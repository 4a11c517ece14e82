"""The model-set manifest: one schema for the prefetch job and the serving process.

Messages name the set's folder, roles and file names, never absolute paths: they reach the public
`/readyz` and 503 answers.

`$MODEL_PATH/<version>/manifest.json` names, per role, a file, its SHA-256, its kind and optionally
its size and input size (README, Model store). The same parser checks a manifest before prefetch
copies a byte and before a serving process opens a file, so a set that could not serve (a missing
swapper, an unknown kind, a file name leaving the folder) fails the prefetch, not every pod.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelSetInvalid, ModelSetMissing
from .files import atomic_write
from .models import REQUIRED_ROLES, ROLES, kind_class
from .models.swapper import missing_converters

MANIFEST_FILE = "manifest.json"
ENTRY_KEYS = ("file", "sha256", "size", "kind", "input_size")  # what an installed manifest keeps


@dataclass(frozen=True)
class ModelEntry:
    """One role of a model set, as the manifest describes it."""

    role: str
    path: Path
    sha256: str
    kind: str
    category: str
    input_size: tuple[int, int] | None = None
    size: int | None = None


@dataclass(frozen=True)
class ModelSet:
    """A model set: its name, version, folder and one entry per role."""

    name: str
    version: str
    directory: Path
    models: dict[str, ModelEntry] = field(default_factory=dict)


def plain_name(value: Any) -> bool:
    """A file or version name that stays inside its folder and is not hidden."""
    return (isinstance(value, str) and bool(value) and "/" not in value and "\\" not in value
            and not value.startswith(".") and value != "current")


def _entry(role: str, raw: Any, directory: Path, where: str) -> ModelEntry:
    if not isinstance(raw, dict):
        raise ModelSetInvalid(f"{where}: entry {role!r} must be an object")
    name = raw.get("file")
    if not plain_name(name):
        raise ModelSetInvalid(f"{where}: entry {role!r} needs a plain 'file' name inside the set (got {name!r})")
    sha = str(raw.get("sha256", "")).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelSetInvalid(f"{where}: entry {role!r} ({name}) needs a 64-hex-digit sha256")
    known = ROLES.get(role)
    kind = str(raw.get("kind") or (known.default_kind if known else ""))
    cls = kind_class(kind)
    if cls is None:
        raise ModelSetInvalid(f"{where}: entry {role!r} ({name}) has kind {kind!r}, which this version does not handle")
    if known is not None and cls.category != known.category:
        raise ModelSetInvalid(f"{where}: entry {role!r} ({name}) has kind {kind!r}, a {cls.category}, not a {known.category}")
    size = raw.get("input_size")
    input_size = None
    if size is not None:
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ModelSetInvalid(f"{where}: entry {role!r} ({name}): input_size must be [width, height]")
        input_size = (size[0], size[1])
    nbytes = raw.get("size")
    if nbytes is not None and not (isinstance(nbytes, int) and nbytes >= 0):
        raise ModelSetInvalid(f"{where}: entry {role!r} ({name}): size must be a byte count")
    return ModelEntry(role=role, path=directory / name, sha256=sha, kind=kind, category=cls.category,
                      input_size=input_size, size=nbytes)


def parse_manifest(raw: Any, directory: Path, where: str = MANIFEST_FILE) -> ModelSet:
    """Check a manifest's content and return the set it describes (no file is opened)."""
    models_raw = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models_raw, dict):
        raise ModelSetInvalid(f"{where} has no 'models' object")
    missing = [role for role in REQUIRED_ROLES if role not in models_raw]
    if missing:
        raise ModelSetInvalid(f"{where} lacks the roles {', '.join(missing)}")
    models = {role: _entry(role, spec, directory, where) for role, spec in models_raw.items()}
    unlinked = missing_converters({role: cls for role, entry in models.items() if (cls := kind_class(entry.kind))})
    if unlinked:
        raise ModelSetInvalid(f"{where}: {'; '.join(unlinked)}")
    version = raw.get("version", directory.resolve().name)
    return ModelSet(name=str(raw.get("name", directory.name)), version=str(version), directory=directory,
                    models=models)


def read_manifest(directory: Path) -> ModelSet:
    """Parse the manifest of the set in `directory` (no file checks yet)."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ModelSetMissing(f"no model set {directory.name!r} yet: its {MANIFEST_FILE} is missing")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSetInvalid(f"{directory.name}/{MANIFEST_FILE} cannot be read: {type(exc).__name__}") from exc
    return parse_manifest(raw, directory, f"{directory.name}/{MANIFEST_FILE}")


def manifest_document(name: str, version: str, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The installed form of a manifest: only the keys the schema defines, per entry."""
    return {"name": name, "version": version,
            "models": {role: {k: v for k, v in spec.items() if k in ENTRY_KEYS} for role, spec in models.items()}}


def write_manifest_file(directory: Path, document: dict[str, Any]) -> Path:
    """Write `manifest.json` atomically (its presence is what makes a set complete)."""
    path = directory / MANIFEST_FILE
    atomic_write(path, (json.dumps(document, indent=2) + "\n").encode())
    return path
