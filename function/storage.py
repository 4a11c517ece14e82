"""Reading and writing objects by (already checked) URI through fsspec, with deadlines.

Writes are atomic for readers: object stores publish an object only when its single PUT completes, and
local files are written to a `.facefusion-tmp` folder beside the target (never through a symlink) and
renamed into place with the pipeline's one atomic-write helper. Failures map to statuses in one place
(`run_io`): the caller's mistakes are 4xx, the store's trouble 503/504. URIs are checked in uris.py,
leases live in leases.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pipeline import atomic_write

from .problems import Problem
from .uris import is_local

_io_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="storage")


def url_to_fs(uri: str) -> tuple[Any, str]:
    """fsspec's filesystem and path for `uri`. fsspec is imported on the first storage call, not at start:
    pods that only answer HTTP never pay its import (~35-60 ms of every cold start)."""
    import fsspec

    return fsspec.core.url_to_fs(uri)


def run_io(fn, timeout: float, what: str, write: bool = False):
    """Run one storage call with a deadline and map its failure to a status: the caller's mistakes
    (a folder, an over-long name, a missing object) are 4xx and final; the store's trouble is 503/504
    with Retry-After, so Eventing retries it."""
    future = _io_pool.submit(fn)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout as exc:
        raise Problem(504, "storage-timeout", f"{what} did not finish within {timeout:g} s", retry_after=5) from exc
    except Problem:
        raise
    except FileNotFoundError as exc:
        raise Problem(422, "object-not-found", f"{what}: the object does not exist") from exc
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        raise Problem(422, "not-a-file", f"{what}: the URI names a folder (or a path through a file), not a file") from exc
    except PermissionError as exc:
        if write:  # a read-only or misconfigured output store: the operator's to fix, so retried
            raise Problem(503, "storage-error", f"{what}: the store refused the write (read-only or no permission)",
                          retry_after=5) from exc
        raise Problem(403, "storage-forbidden", f"{what}: access denied by the store") from exc
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise Problem(400, "name-too-long", f"{what}: the name is too long for the store") from exc
        raise Problem(503, "storage-error", f"{what} failed: {type(exc).__name__}", retry_after=5) from exc
    except Exception as exc:  # network or store failures: worth a retry elsewhere
        raise Problem(503, "storage-error", f"{what} failed: {type(exc).__name__}", retry_after=5) from exc


def read_bytes(uri: str, max_bytes: int, timeout: float) -> bytes:
    """Read a whole object, refusing one larger than `max_bytes` before downloading it."""
    def _read() -> bytes:
        fs, path = url_to_fs(uri)
        try:
            size = fs.size(path)
        except (NotImplementedError, AttributeError):
            size = None
        if size is not None and size > max_bytes:
            raise Problem(413, "image-too-large", f"the object is {size} bytes; the limit is {max_bytes}")
        with fs.open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise Problem(413, "image-too-large", f"the object exceeds {max_bytes} bytes")
        return data
    return run_io(_read, timeout, "reading the input")


def exists(uri: str, timeout: float) -> bool:
    def _exists() -> bool:
        fs, path = url_to_fs(uri)
        return fs.exists(path)
    return run_io(_exists, timeout, "checking the output")


HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
STALE_PARTIAL_S = 3600
TMP_DIR = ".facefusion-tmp"  # beside the outputs (same filesystem, so the rename is atomic)
_TMP_BASE_MAX = 100  # the output's name is cut in a temp name, which must stay under NAME_MAX
# <output name>.<host>.<pid>.<uuid4 hex>.partial: the only names the orphan sweep ever removes
_PARTIAL = re.compile(r"^.+\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)\.[0-9a-f]{32}\.partial$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_name(base: str) -> str:
    return f"{base[:_TMP_BASE_MAX]}.{HOST}.{os.getpid()}.{uuid.uuid4().hex}.partial"


def open_tmp_dir(parent: str) -> int:
    """The temp folder beside a local output, opened without following symlinks. It is checked like
    any other path: the output's folder must still resolve to itself (the URI was checked against the
    allow-list in resolved form), and the temp folder must be a real folder, not a symlink."""
    os.makedirs(parent, exist_ok=True)
    if os.path.realpath(parent) != os.path.normpath(parent):
        raise Problem(403, "uri-not-allowed", "the output's folder resolves elsewhere than the checked URI (a symlink)")
    tmp_dir = os.path.join(parent, TMP_DIR)
    with contextlib.suppress(FileExistsError):
        os.mkdir(tmp_dir, 0o755)
    try:
        return os.open(tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Problem(403, "unsafe-temp-folder",
                          f"{TMP_DIR} beside the output is a symlink or not a folder; refusing to write through it") from exc
        raise


def _remove_orphans(dfd: int) -> None:
    """Temp files of writers killed mid-write: our own name pattern only, regular files only, and
    either from this host with a dead pid or simply old. Nothing else in the folder is touched."""
    try:
        names = os.listdir(dfd)
    except OSError:
        return
    now = time.time()
    for name in names:
        match = _PARTIAL.match(name)
        if match is None:
            continue
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            dead = match["host"] == HOST and not pid_alive(int(match["pid"]))
            if dead or now - st.st_mtime > STALE_PARTIAL_S:
                os.unlink(name, dir_fd=dfd)
        except (OSError, ValueError):
            continue


def _write_local(path: str, data: bytes, exclusive: bool = False) -> None:
    """Write a local output through its own temp folder; with `exclusive`, FileExistsError if one is there."""
    parent, base = os.path.split(path)
    if not base:
        raise Problem(400, "invalid-uri", "the output URI names a folder, not a file")
    dfd = open_tmp_dir(parent)
    try:
        atomic_write(path, data, tmp_dir_fd=dfd, tmp_name=_tmp_name(base), exclusive=exclusive)
        _remove_orphans(dfd)
    finally:
        os.close(dfd)


def write_exclusive(uri: str, data: bytes) -> bool:
    """Create `uri` with `data` only if nothing is there: True if this call created it (call it inside
    `run_io`). Local files: a hard link of a complete temp file (link(2) fails if the name exists), so
    the object appears whole and exactly one creator wins. Other stores: fsspec's
    `pipe_file(mode="create")`, a conditional PUT where the backend implements it (s3fs:
    `If-None-Match: *`), check-then-write otherwise."""
    fs, path = url_to_fs(uri)
    if is_local(uri):
        try:
            _write_local(path, data, exclusive=True)
        except FileExistsError:
            return False
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except TypeError:  # an implementation without exclusive writes: check, then write
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    return True


def write_atomic(uri: str, data: bytes, timeout: float) -> None:
    """Publish `data` at `uri` so that no reader ever sees a partial object."""
    run_io(lambda: replace(uri, data), timeout, "writing the output", write=True)


def replace(uri: str, data: bytes) -> None:
    """Put `data` at `uri` whole, replacing what is there (call it inside `run_io`)."""
    fs, path = url_to_fs(uri)
    if is_local(uri):
        _write_local(path, data)
    else:
        fs.pipe_file(path, data)


def load_json(fs, path: str) -> dict | None:
    try:
        with fs.open(path, "rb") as fh:
            loaded = json.loads(fh.read(1 << 20))
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def read_json(uri: str, timeout: float) -> dict | None:
    def _read() -> dict | None:
        fs, path = url_to_fs(uri)
        return load_json(fs, path)
    return run_io(_read, timeout, "reading the completion marker")


