"""Videos as local files: inputs fetched from a checked URI into a bounded temp folder, outputs published.

The pipeline's video code reads and writes local files (PyAV seeks), so a video named by a URI is
copied into this process's work folder first, refusing one above MAX_VIDEO_BYTES before and while
copying. Segments of one job that run on the same process share one copy (a small cache keyed by the
input's identity), so a pod fusing several segments of a clip downloads it once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import fsspec

from . import storage
from .problems import Problem

CHUNK = 1 << 20
BYTES_PER_SECOND = 16 << 20  # a video read's deadline grows by one second per 16 MiB beyond STORAGE_TIMEOUT_S


def work_dir() -> Path:
    """This process's own folder for video inputs, parts and outputs (removed files never linger long:
    each user deletes its own; a killed process leaves a folder named by its pid)."""
    path = Path(tempfile.gettempdir()) / f"facefusion-video-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def temp_path(suffix: str) -> Path:
    return work_dir() / f"{uuid.uuid4().hex}{suffix}"


def deadline(timeout: float, size: int | None) -> float:
    return timeout + (size or 0) / BYTES_PER_SECOND


def fetch(uri: str, dest: Path, max_bytes: int, timeout: float) -> Path:
    """Copy a checked URI to `dest`, refusing more than `max_bytes` (413) before and while copying."""
    fs, path = fsspec.core.url_to_fs(uri)

    def _size() -> int | None:
        try:
            return fs.size(path)
        except (NotImplementedError, AttributeError):
            return None

    size = storage.run_io(_size, timeout, "reading the video")
    if size is not None and size > max_bytes:
        raise Problem(413, "video-too-large", f"the video is {size} bytes; the limit is MAX_VIDEO_BYTES ({max_bytes})",
                      image="target")

    def _copy() -> None:
        copied = 0
        with fs.open(path, "rb") as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                copied += len(chunk)
                if copied > max_bytes:
                    raise Problem(413, "video-too-large", f"the video exceeds MAX_VIDEO_BYTES ({max_bytes} bytes)",
                                  image="target")
                out.write(chunk)

    try:
        storage.run_io(_copy, deadline(timeout, size), "reading the video")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def publish(uri: str, local: Path, timeout: float) -> None:
    """Publish a local file at a URI atomically (storage.write_atomic: a whole PUT, or a rename)."""
    data = local.read_bytes()
    storage.write_atomic(uri, data, deadline(timeout, len(data)))


class InputCache:
    """The last few fetched inputs, by identity (URI and version), for the segments of one job that
    land on this process. Bounded by count; each entry is at most MAX_VIDEO_BYTES."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._files: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def get(self, identity: str, uri: str, suffix: str, max_bytes: int, timeout: float) -> Path:
        with self._lock:
            key_lock = self._key_locks.setdefault(identity, threading.Lock())
        with key_lock:  # one download per input, however many segments ask at once
            with self._lock:
                path = self._files.get(identity)
                if path is not None and path.exists():
                    self._files.move_to_end(identity)
                    return path
            try:
                path = fetch(uri, temp_path(suffix), max_bytes, timeout)
            except BaseException:
                with self._lock:
                    if identity not in self._files:
                        self._key_locks.pop(identity, None)
                raise
            with self._lock:
                self._files[identity] = path
                while len(self._files) > self.capacity:
                    gone, old = self._files.popitem(last=False)
                    self._key_locks.pop(gone, None)
                    with contextlib.suppress(OSError):
                        old.unlink()  # a reader that still has it open keeps its data (POSIX)
            return path


def remove(*paths: Path | None) -> None:
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
