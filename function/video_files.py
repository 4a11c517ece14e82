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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


def temp_path(suffix: str, folder: Path | None = None) -> Path:
    """A new file name in `folder` (made if missing), by default this process's work folder."""
    if folder is None:
        folder = work_dir()
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{uuid.uuid4().hex}{suffix}"


def deadline(timeout: float, size: int | None) -> float:
    return timeout + (size or 0) / BYTES_PER_SECOND


def fetch(uri: str, dest: Path, max_bytes: int, timeout: float) -> Path:
    """Copy a checked URI to `dest`, refusing more than `max_bytes` (413) before and while copying."""
    fs, path = storage.url_to_fs(uri)

    def _size() -> int | None:
        try:
            return fs.size(path)
        except (NotImplementedError, AttributeError):
            return None

    size = storage.run_io(_size, timeout, "reading the video")
    if size is not None and size > max_bytes:
        raise Problem(413, "video-too-large", f"the video is {size} bytes; the limit is MAX_VIDEO_BYTES ({max_bytes})",
                      image="target")

    cancel = threading.Event()  # set when the caller gives up: the copy stops at its next chunk

    def _copy() -> None:
        if cancel.is_set():  # the deadline passed while this waited for a storage thread
            return
        try:
            copied = 0
            with fs.open(path, "rb") as src, open(dest, "wb") as out:
                while not cancel.is_set() and (chunk := src.read(CHUNK)):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise Problem(413, "video-too-large", f"the video exceeds MAX_VIDEO_BYTES ({max_bytes} bytes)",
                                      image="target")
                    out.write(chunk)
            if cancel.is_set():
                raise Cancelled
        except BaseException:
            dest.unlink(missing_ok=True)  # the copy's own partial file, once it has stopped writing it
            raise

    try:
        storage.run_io(_copy, deadline(timeout, size), "reading the video")
    except BaseException:
        cancel.set()
        dest.unlink(missing_ok=True)  # a copy that finished just as the deadline passed
        raise
    return dest


class Cancelled(Exception):
    """A copy whose caller gave up (its deadline passed): nobody waits for its result."""


def publish(uri: str, local: Path, timeout: float) -> None:
    """Publish a local file at a URI atomically (storage.write_atomic: a whole PUT, or a rename)."""
    data = local.read_bytes()
    storage.write_atomic(uri, data, deadline(timeout, len(data)))


@dataclass
class _Cached:
    path: Path
    pins: int = 0  # callers inside `get` with this file: it is never unlinked under them


@dataclass
class _Loading:
    lock: threading.Lock = field(default_factory=threading.Lock)  # one download per input at a time
    users: int = 0  # callers waiting on or holding `lock`: the slot goes when the last one leaves


class InputCache:
    """The last few fetched inputs, by identity (URI and version), for the segments of one job that
    land on this process. Bounded by count (entries in use are kept beyond it until released); each
    entry is at most MAX_VIDEO_BYTES.

    A caller holds its file for as long as it is inside `get` (a pin): the fan-out decodes the source
    before it opens the clip, and the stitcher downloads every part before it opens the audio input, so
    evicting a file as soon as it was handed out would pull it from under them."""

    def __init__(self, capacity: int = 2, folder: Path | None = None) -> None:
        self.capacity = capacity
        self._folder = folder
        self._files: OrderedDict[str, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, _Loading] = {}

    @contextlib.contextmanager
    def get(self, identity: str, uri: str, suffix: str, max_bytes: int, timeout: float) -> Iterator[Path]:
        """The input as a local file, fetched once however many callers ask at once, kept while held."""
        entry = self._pin(identity, uri, suffix, max_bytes, timeout)
        try:
            yield entry.path
        finally:
            with self._lock:
                entry.pins -= 1
                stale = self._evict()
                if self._files.get(identity) is not entry and entry.pins == 0:
                    stale.append(entry.path)  # replaced while held: its last holder removes it
            remove(*stale)

    def _pin(self, identity: str, uri: str, suffix: str, max_bytes: int, timeout: float) -> _Cached:
        with self._lock:
            loading = self._loading.setdefault(identity, _Loading())
            loading.users += 1
        try:
            with loading.lock:
                with self._lock:
                    entry = self._files.get(identity)
                    if entry is not None and entry.path.exists():
                        entry.pins += 1
                        self._files.move_to_end(identity)
                        return entry
                path = fetch(uri, temp_path(suffix, self._folder), max_bytes, timeout)
                with self._lock:
                    replaced = self._files.pop(identity, None)
                    entry = self._files[identity] = _Cached(path, pins=1)
                    stale = self._evict()
                    if replaced is not None and replaced.pins == 0:
                        stale.append(replaced.path)  # its file went missing; drop the name too
                remove(*stale)
                return entry
        finally:
            with self._lock:
                loading.users -= 1
                if loading.users == 0:
                    self._loading.pop(identity, None)

    def _evict(self) -> list[Path]:
        """Drop the least recently used entries nobody holds, down to the capacity (call under the lock);
        the files to remove are returned, to be unlinked outside it."""
        gone: list[Path] = []
        for identity in list(self._files):
            if len(self._files) <= self.capacity:
                break
            if self._files[identity].pins == 0:
                gone.append(self._files.pop(identity).path)
        return gone


def remove(*paths: Path | None) -> None:
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
