"""Writing files so that a reader, or a process killed mid-write, never leaves a partial one behind.

Every package writes through `atomic_write`: verification verdicts, manifests, side files, outputs on
a `file://` store, prefetched models. The bytes go to a temporary file in the same folder (or a given
folder on the same filesystem), are flushed and fsynced, renamed into place, and the folder is
fsynced, so after a crash the path holds either the old content or the whole new content.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> str:
    """A temporary name beside `path` that no other writer (process, host, thread) can pick."""
    return f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.partial"


def atomic_write(path: str | os.PathLike[str], data: bytes, tmp_path: str | os.PathLike[str] | None = None) -> None:
    """Publish `data` at `path` whole or not at all.

    `tmp_path` names the temporary file when the caller keeps temporaries elsewhere on the same
    filesystem (the function's output folders, so that a sweep can find orphans of killed writers);
    by default it sits hidden beside `path`.
    """
    target = Path(path)
    tmp = Path(tmp_path) if tmp_path is not None else target.parent / temp_name(target)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_symlink(link: Path, points_to: str) -> None:
    """Point `link` at `points_to` in one step (readers see the old target or the new one)."""
    tmp = link.parent / temp_name(link)
    os.symlink(points_to, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(link.parent)
