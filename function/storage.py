"""Reading and writing images by URI through fsspec, behind an allow-list.

Every URI a request names is checked before anything is opened: its scheme and bucket must fall under
one of ALLOWED_URI_PREFIXES after normalisation (percent-decoding, `..` and `.` segments, symlinks for
file://). Writes are atomic for readers: object stores publish an object only when its single PUT
completes, and local files are written beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import unquote, urlsplit

import fsspec

from pipeline import atomic_write

from .problems import Problem

_io_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="storage")
_LOCAL = ("file", "local")


def _split(uri: str) -> tuple[str, str, str]:
    if "\x00" in uri or any(ord(c) < 0x20 for c in uri):
        raise Problem(400, "invalid-uri", "the URI contains control characters")
    parts = urlsplit(uri)
    if not parts.scheme or "://" not in uri:
        raise Problem(400, "invalid-uri", "not an absolute URI (scheme://...)")
    path = unquote(parts.path)
    if parts.query or parts.fragment:
        raise Problem(403, "uri-not-allowed", "URIs with a query or fragment are not allowed")
    return parts.scheme.lower(), parts.netloc.lower() if parts.scheme.lower() not in _LOCAL else parts.netloc, path


def normalise(uri: str) -> str:
    """Canonical form used for allow-list checks; refuses `..` outright rather than resolving it."""
    scheme, netloc, path = _split(uri)
    if any(s.strip() == ".." for s in path.split("/")):
        raise Problem(403, "uri-not-allowed", "URIs may not contain '..' segments")
    clean = posixpath.normpath(path) if path else ""
    if path.endswith("/") and not clean.endswith("/"):
        clean += "/"
    if clean == ".":
        clean = ""
    if scheme in _LOCAL:
        return "file://" + os.path.realpath(clean or "/")
    return f"{scheme}://{netloc}{clean}"


class AllowList:
    """ALLOWED_URI_PREFIXES, normalised once (resolving a file:// prefix touches the filesystem)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes: list[str] = []
        for prefix in (p.strip() for p in prefixes):
            if prefix.endswith("://"):
                self.prefixes.append(prefix.lower())
                continue
            try:
                norm = normalise(prefix)
            except Problem:
                continue  # a malformed entry allows nothing
            self.prefixes.append(norm if norm.endswith("/") else norm + "/")

    def check(self, uri: str) -> str:
        """Return the normalised URI if it is allowed; raise a 400/403 problem otherwise. No I/O besides
        resolving symlinks of file:// paths."""
        if not isinstance(uri, str) or not uri:
            raise Problem(400, "invalid-uri", "a URI must be a non-empty string")
        norm = normalise(uri)
        if any(norm.startswith(p) or norm + "/" == p for p in self.prefixes):
            return norm
        raise Problem(403, "uri-not-allowed", f"{norm.split('://')[0]}:// URI outside ALLOWED_URI_PREFIXES")


def _run(fn, timeout: float, what: str):
    future = _io_pool.submit(fn)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout as exc:
        raise Problem(504, "storage-timeout", f"{what} did not finish within {timeout:g} s", retry_after=5) from exc
    except FileNotFoundError as exc:
        raise Problem(422, "object-not-found", f"{what}: the object does not exist") from exc
    except PermissionError as exc:
        raise Problem(403, "storage-forbidden", f"{what}: access denied by the store") from exc
    except Problem:
        raise
    except Exception as exc:  # network or store failures: worth a retry elsewhere
        raise Problem(503, "storage-error", f"{what} failed: {type(exc).__name__}", retry_after=5) from exc


def read_bytes(uri: str, max_bytes: int, timeout: float) -> bytes:
    """Read a whole object, refusing one larger than `max_bytes` before downloading it."""
    def _read() -> bytes:
        fs, path = fsspec.core.url_to_fs(uri)
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
    return _run(_read, timeout, "reading the input")


def exists(uri: str, timeout: float) -> bool:
    def _exists() -> bool:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.exists(path)
    return _run(_exists, timeout, "checking the output")


_HOST = socket.gethostname().replace(".", "_")
STALE_PARTIAL_S = 3600
TMP_DIR = ".facefusion-tmp"  # beside the outputs (same filesystem, so the rename is atomic)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_orphans(tmp_dir: str) -> None:
    """Temp files of writers killed mid-write: same host and a dead pid, or simply old. Temp files live
    in their own folder, so this lists only writes in flight or orphaned, never all the outputs."""
    try:
        names = os.listdir(tmp_dir)
    except OSError:
        return
    for name in names:
        parts = name.rsplit(".", 4)  # <output name>.<host>.<pid>.<uuid>.partial
        try:
            orphan = (len(parts) == 5 and parts[1] == _HOST and not _pid_alive(int(parts[2]))) or (
                time.time() - os.path.getmtime(os.path.join(tmp_dir, name)) > STALE_PARTIAL_S)
            if orphan:
                os.unlink(os.path.join(tmp_dir, name))
        except (OSError, ValueError):
            continue


def write_atomic(uri: str, data: bytes, timeout: float) -> None:
    """Publish `data` at `uri` so that no reader ever sees a partial object."""
    def _write() -> None:
        fs, path = fsspec.core.url_to_fs(uri)
        if urlsplit(uri).scheme in _LOCAL:
            tmp_dir = posixpath.join(posixpath.dirname(path), TMP_DIR)
            os.makedirs(tmp_dir, exist_ok=True)
            tmp = posixpath.join(tmp_dir, f"{posixpath.basename(path)}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.partial")
            atomic_write(path, data, tmp_path=tmp)
            _remove_orphans(tmp_dir)
        else:
            fs.pipe_file(path, data)
    _run(_write, timeout, "writing the output")


def read_json(uri: str, timeout: float) -> dict | None:
    def _read() -> dict | None:
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            with fs.open(path, "rb") as fh:
                loaded = json.loads(fh.read(1 << 20))
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        return loaded if isinstance(loaded, dict) else None
    return _run(_read, timeout, "reading the completion marker")
