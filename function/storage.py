"""Reading and writing images by URI through fsspec, behind an allow-list.

Every URI a request names is checked before anything is opened: its scheme and bucket must fall under
one of ALLOWED_URI_PREFIXES after normalisation (percent-decoding, `..` and `.` segments, symlinks for
file://). Writes are atomic for readers: object stores publish an object only when its single PUT
completes, and local files are written to a `.facefusion-tmp` folder beside the target (never through
a symlink) and renamed into place. A lease beside an output (`claim`) lets one delivery at a time fuse
it. Failures map to statuses in one place (`_run`): the caller's mistakes are 4xx, the store's 503/504.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import re
import socket
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import unquote, urlsplit

import fsspec

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
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path + unquote(parts.netloc)):
        raise Problem(400, "invalid-uri", "the URI contains control characters (percent-encoded or not)")
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
    _check_length(scheme, clean)
    if scheme in _LOCAL:
        return "file://" + os.path.realpath(clean or "/")
    return f"{scheme}://{netloc}{clean}"


MAX_KEY_BYTES = 1024  # S3, GCS and Azure blob names; also well under PATH_MAX
MAX_LOCAL_NAME_BYTES = 255  # NAME_MAX of Linux filesystems


def check_length(norm: str, reserve: int = 0) -> None:
    """`_check_length` of a normalised URI (whose path is no longer percent-encoded)."""
    scheme, _, rest = norm.partition("://")
    _check_length(scheme, rest if scheme in _LOCAL else "/" + rest.partition("/")[2], reserve)


def _check_length(scheme: str, path: str, reserve: int = 0) -> None:
    """An over-long name is the caller's mistake (400), never a store failure worth retrying.
    `reserve` keeps room for a suffix added to the name (the marker beside an output)."""
    if len(path.encode()) + reserve > MAX_KEY_BYTES:
        raise Problem(400, "name-too-long", f"the object name exceeds {MAX_KEY_BYTES - reserve} bytes")
    if scheme in _LOCAL and any(len(seg.encode()) + reserve > MAX_LOCAL_NAME_BYTES for seg in path.split("/")):
        raise Problem(400, "name-too-long", f"a file name exceeds {MAX_LOCAL_NAME_BYTES - reserve} bytes")


class AllowList:
    """ALLOWED_URI_PREFIXES (or ALLOWED_OUTPUT_PREFIXES), normalised once (resolving a file:// prefix
    touches the filesystem). Entries name folders: `s3://b/in` allows `s3://b/in/x`, not `s3://b/inx`."""

    def __init__(self, prefixes: tuple[str, ...], name: str = "ALLOWED_URI_PREFIXES", code: str = "uri-not-allowed") -> None:
        self.name, self.code = name, code
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

    @classmethod
    def exact(cls, prefixes: tuple[str, ...], name: str, code: str) -> AllowList:
        """Already normalised string prefixes, matched as they are (the fixed part of OUTPUT_URI, which
        may end inside a name: `s3://out/fused-{stem}.jpg` allows `s3://out/fused-…` only)."""
        allow = cls((), name, code)
        allow.prefixes = list(prefixes)
        return allow

    def check(self, uri: str) -> str:
        """Return the normalised URI if it is allowed; raise a 400/403 problem otherwise. No I/O besides
        resolving symlinks of file:// paths."""
        if not isinstance(uri, str) or not uri:
            raise Problem(400, "invalid-uri", "a URI must be a non-empty string")
        norm = normalise(uri)
        if any(norm.startswith(p) or norm + "/" == p for p in self.prefixes):
            return norm
        raise Problem(403, self.code, f"{norm.split('://')[0]}:// URI outside {self.name}")


def _run(fn, timeout: float, what: str, write: bool = False):
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


def is_local(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in _LOCAL


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
STALE_PARTIAL_S = 3600
TMP_DIR = ".facefusion-tmp"  # beside the outputs (same filesystem, so the rename is atomic)
_TMP_BASE_MAX = 100  # the output's name is cut in a temp name, which must stay under NAME_MAX
# <output name>.<host>.<pid>.<uuid4 hex>.partial: the only names the orphan sweep ever removes
_PARTIAL = re.compile(r"^.+\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)\.[0-9a-f]{32}\.partial$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_name(base: str) -> str:
    return f"{base[:_TMP_BASE_MAX]}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.partial"


def _open_tmp_dir(parent: str) -> int:
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


def _write_tmp(dfd: int, base: str, data: bytes) -> str:
    """A complete, fsynced temp file in the temp folder; removed again if anything fails."""
    tmp = _tmp_name(base)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    return tmp


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
            dead = match["host"] == _HOST and not _pid_alive(int(match["pid"]))
            if dead or now - st.st_mtime > STALE_PARTIAL_S:
                os.unlink(name, dir_fd=dfd)
        except (OSError, ValueError):
            continue


def _write_local(path: str, data: bytes) -> None:
    parent, base = os.path.split(path)
    if not base:
        raise Problem(400, "invalid-uri", "the output URI names a folder, not a file")
    dfd = _open_tmp_dir(parent)
    try:
        tmp = _write_tmp(dfd, base, data)
        try:
            os.replace(tmp, path, src_dir_fd=dfd)
        except BaseException:  # a read-only folder, a folder at the target, …: no partial stays behind
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        _fsync_dir(parent)
        _remove_orphans(dfd)
    finally:
        os.close(dfd)


def write_atomic(uri: str, data: bytes, timeout: float) -> None:
    """Publish `data` at `uri` so that no reader ever sees a partial object."""
    def _write() -> None:
        fs, path = fsspec.core.url_to_fs(uri)
        if is_local(uri):
            _write_local(path, data)
        else:
            fs.pipe_file(path, data)
    _run(_write, timeout, "writing the output", write=True)


def _load_json(fs, path: str) -> dict | None:
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
        fs, path = fsspec.core.url_to_fs(uri)
        return _load_json(fs, path)
    return _run(_read, timeout, "reading the completion marker")


# -- leases: one delivery at a time fuses an output --------------------------------------------------
LEASE_SUFFIX = ".facefusion.lease"
_claim_locks = [threading.Lock() for _ in range(64)]  # in-process exclusion (memory://, check-then-write stores)
_held: set[str] = set()  # owner tokens of the leases this process holds now


def _create_exclusive(uri: str, data: bytes) -> bool:
    """Create `uri` with `data` only if nothing is there: True if this call created it.

    Local files: the content goes to a temp file, which is then hard-linked into place (link(2) fails
    if the name exists), so the object appears whole and exactly one creator wins. Other stores:
    fsspec's `pipe_file(mode="create")`, a conditional PUT where the backend implements it (s3fs:
    `If-None-Match: *`), check-then-write otherwise."""
    fs, path = fsspec.core.url_to_fs(uri)
    if is_local(uri):
        parent, base = os.path.split(path)
        dfd = _open_tmp_dir(parent)
        try:
            tmp = _write_tmp(dfd, base, data)
            try:
                os.link(tmp, path, src_dir_fd=dfd)
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
            _fsync_dir(parent)
            return True
        finally:
            os.close(dfd)
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except TypeError:  # an implementation without exclusive writes: check, then write
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    return True


def _lease_expiry(fs, path: str, held: dict | None, ttl: float) -> float:
    """When a lease found in place expires: as it says, or (unreadable) its age plus the TTL."""
    if held is not None and isinstance(held.get("expires_at"), (int, float)):
        return float(held["expires_at"])
    try:
        return fs.modified(path).timestamp() + ttl
    except Exception:  # no modification time: an unreadable lease is taken over
        return 0.0


def _holder_gone(held: dict | None) -> bool:
    """A lease taken on this host by a process that is gone (a killed worker, a restarted container:
    our pid, but not one of our leases) is not waited out."""
    if not held or held.get("host") != _HOST or not isinstance(held.get("pid"), int):
        return False
    if held["pid"] == os.getpid():
        return held.get("owner") not in _held
    return not _pid_alive(held["pid"])


def claim(uri: str, ttl: float, timeout: float) -> str:
    """Take the lease on output `uri` (`<output>.facefusion.lease`) and return its owner token; raise a
    429 problem (retryable, with Retry-After) while another delivery holds a live lease. An expired
    lease (its holder was killed or hung), or one whose holder on this host is gone, is taken over."""
    owner = f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex}"
    lease_uri = uri + LEASE_SUFFIX

    def _claim() -> float | None:
        now = time.time()
        body = json.dumps({"owner": owner, "host": _HOST, "pid": os.getpid(), "claimed_at": now,
                           "expires_at": now + ttl}).encode()
        with _claim_locks[hash(lease_uri) % len(_claim_locks)]:
            if _create_exclusive(lease_uri, body):
                return None
            fs, path = fsspec.core.url_to_fs(lease_uri)
            held = _load_json(fs, path)
            expiry = _lease_expiry(fs, path, held, ttl)
            if expiry > time.time() and not _holder_gone(held):
                return expiry - time.time()
            with contextlib.suppress(FileNotFoundError):  # expired: take it over
                fs.rm_file(path)
            return None if _create_exclusive(lease_uri, body) else ttl

    _held.add(owner)
    try:
        remaining = _run(_claim, timeout, "claiming the output", write=True)
    except BaseException:
        _held.discard(owner)
        raise
    if remaining is not None:
        _held.discard(owner)
        raise Problem(429, "in-progress", "another delivery of this event is being fused right now; retry shortly",
                      retry_after=max(1, min(int(remaining) + 1, 10)))
    return owner


def release(uri: str, owner: str, timeout: float) -> None:
    """Drop our lease on output `uri`; best effort (an unreleased lease expires on its own)."""
    def _release() -> None:
        fs, path = fsspec.core.url_to_fs(uri + LEASE_SUFFIX)
        held = _load_json(fs, path)
        if held is not None and held.get("owner") == owner:
            fs.rm_file(path)
    try:
        with contextlib.suppress(Problem):
            _run(_release, timeout, "releasing the output", write=True)
    finally:
        _held.discard(owner)
