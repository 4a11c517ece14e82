"""Writing files so that a reader, or a process killed mid-write, never leaves a partial one behind.

Every package writes through `atomic_write`: verification verdicts, manifests, side files, outputs on
a `file://` store, prefetched models. The bytes go to a temporary file in the same folder (or a given
folder on the same filesystem), are flushed and fsynced, renamed into place, and the folder is
fsynced, so after a crash the path holds either the old content or the whole new content.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
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


def atomic_write(path: str | os.PathLike[str], data: bytes, tmp_dir_fd: int | None = None,
                 tmp_name: str | None = None, exclusive: bool = False) -> None:
    """Publish `data` at `path` whole or not at all.

    By default the temporary file sits hidden beside `path`. A caller that keeps temporaries in a
    folder of its own on the same filesystem (the function's output folders, opened without following
    symlinks, so that a sweep can find the orphans of killed writers) passes that folder's descriptor
    and the name to use in it. The temporary is created exclusively and never through a symlink, and
    it is removed again when anything fails. With `exclusive`, the file is published only if nothing
    is at `path` yet (a hard link, which fails with FileExistsError), so exactly one of several
    writers wins.
    """
    target = Path(path)
    tmp = tmp_name or (temp_name(target) if tmp_dir_fd is not None else str(target.parent / temp_name(target)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=tmp_dir_fd)
    published = False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, target, src_dir_fd=tmp_dir_fd)
        else:
            os.replace(tmp, target, src_dir_fd=tmp_dir_fd)
            published = True
    finally:
        if not published:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=tmp_dir_fd)
    fsync_dir(target.parent)


def atomic_symlink(link: Path, points_to: str) -> None:
    """Point `link` at `points_to` in one step (readers see the old target or the new one)."""
    tmp = link.parent / temp_name(link)
    os.symlink(points_to, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
