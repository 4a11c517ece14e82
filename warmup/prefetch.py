"""Copy a model set onto the shared volume, verified, atomically and once.

An init container (or a one-off Job) runs `python -m warmup prefetch SOURCE` before the function starts:

- SOURCE is any fsspec URI of a folder holding `manifest.json` and the files it names (`s3://`, `gs://`,
  `https://`, `file://`, `memory://`), or `default` for the pinned buffalo_l + inswapper_128 set;
- every file is hashed while it is copied and must match the manifest's SHA-256, or the run fails
  naming the file and leaves nothing behind but what was already complete;
- files are written as `.NAME.partial` and renamed into place, and `manifest.json` is written last,
  so a pod never sees a partial file or a set whose files are not all there;
- the manifest is checked with the pipeline's own parser (`pipeline.parse_manifest`) before a byte is
  copied, so a set that could not serve (no swapper, an unknown kind, a file name leaving the folder)
  fails here with the pipeline's message instead of failing readiness on every pod;
- several init containers may run at once on the same volume: an exclusive lock per version makes the
  others wait, and they then find the files complete and reuse them; the lock file exists only while
  a prefetch runs;
- a failed run removes what it started (partial files, the fetched archive, the lock, folders it
  created that hold nothing complete); files it completed and verified stay and are reused next time;
- a killed run resumes a partial file where the source can seek, and starts it over when it cannot or
  when the resumed bytes turn out wrong.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import fsspec

from pipeline import (
    ModelSetInvalid,
    VerdictCache,
    atomic_symlink,
    manifest_document,
    parse_manifest,
    plain_name,
    sha256_file,
    write_manifest_file,
)

from .default_set import DEFAULT_SET

CHUNK = 8 * 1024 * 1024


class PrefetchError(Exception):
    """A prefetch that cannot complete; the message says which file and why."""


@dataclass
class PrefetchResult:
    version: str
    directory: Path
    copied: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


class Progress:
    """Progress lines on stderr, at most one every `interval` seconds per file."""

    def __init__(self, stream: IO[str] | None = sys.stderr, interval: float = 2.0) -> None:
        self.stream = stream
        self.interval = interval

    def say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    def copier(self, name: str, total: int | None) -> Callable[[int], None]:
        start = last = time.monotonic()

        def tick(done: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= self.interval:
                last = now
                pct = f" ({100 * done / total:.0f}%)" if total else ""
                self.say(f"{name}: {done / 1e6:.1f}{f'/{total / 1e6:.1f}' if total else ''} MB{pct}, {now - start:.0f} s")
        return tick


def _make_folders(folder: Path, created: list[Path]) -> None:
    """mkdir -p that records, outermost first, each folder this call really created."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:
            pass


@contextlib.contextmanager
def _locked(path: Path, created: list[Path]) -> Iterator[None]:
    """An exclusive lock held through `path`, which exists only while it is held.

    The holder removes the file before it unlocks; a waiter that then gets the lock on the removed
    file sees that the path no longer names its file and tries again, so two holders never overlap.
    """
    while True:
        _make_folders(path.parent, created)
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        except FileNotFoundError:  # a failed run removed the folder meanwhile: make it again
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            held = os.stat(path)
            mine = os.fstat(fd)
            if (held.st_dev, held.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _open_uri(uri: str) -> IO[bytes]:
    kwargs: dict[str, Any] = {}
    if uri.startswith(("http://", "https://")):
        import aiohttp

        kwargs["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=120)}
    return fsspec.open(uri, "rb", **kwargs).open()


def _copy_verified(open_src: Callable[[], IO[bytes]], dest: Path, sha256: str, size: int | None,
                   progress: Progress) -> str:
    """Stream into `.NAME.partial`, hash on the way, rename into place; 'copied' or 'resumed'."""
    partial = dest.parent / f".{dest.name}.partial"
    for attempt in ("resume", "fresh"):
        digest = hashlib.sha256()
        offset = 0
        if attempt == "resume" and partial.exists() and partial.stat().st_size > 0:
            with open(partial, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
            offset = partial.stat().st_size
        elif partial.exists():
            partial.unlink()
        tick = progress.copier(dest.name, size)
        with open_src() as src:
            if offset:
                try:
                    src.seek(offset)
                except Exception:  # a source that cannot seek: start this file over
                    continue
            with open(partial, "ab" if offset else "wb") as out:
                done = offset
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    tick(done)
                out.flush()
                os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual == sha256:
            os.replace(partial, dest)
            return "resumed" if offset else "copied"
        if offset:  # the kept bytes were not a prefix of the right file: start over once
            partial.unlink(missing_ok=True)
            continue
        partial.unlink(missing_ok=True)
        raise PrefetchError(f"{dest.name}: downloaded sha256 {actual} does not match the manifest's {sha256}")
    raise PrefetchError(f"{dest.name}: could not be copied")


def _first_reachable(urls: list[str], name: str) -> Callable[[], IO[bytes]]:
    errors = []
    for url in urls:
        try:
            handle = _open_uri(url)
        except Exception as exc:  # DNS, refused, 404: try the next mirror
            errors.append(f"{url}: {type(exc).__name__}: {exc}"[:300])
            continue
        opened = [handle]

        def open_src() -> IO[bytes]:
            return opened.pop() if opened else _open_uri(url)  # noqa: B023 - bound for this url only
        return open_src
    raise PrefetchError(
        f"{name}: none of its download locations could be reached (no internet access here?). "
        f"Tried: {'; '.join(errors)}. Prefetch from a mirror you can reach instead: "
        f"python -m warmup prefetch s3://your-bucket/models/<version>/")


def _plan(source: str | dict) -> tuple[dict, str, Callable[[str, dict], Callable[[], IO[bytes]]]]:
    """The manifest to install, where it came from (for messages) and, per entry, how to open its bytes.

    `source` is a URI, `default`, or a manifest built in code (warmup/catalogue.py) whose entries carry
    their `urls` (or an `archive`) as the default set's do."""
    if isinstance(source, dict):
        return source, "the catalogue's manifest", lambda name, spec: _first_reachable(spec["urls"], name)
    if source == "default":
        return DEFAULT_SET, "the default set's manifest", lambda name, spec: _first_reachable(spec["urls"], name)
    base = source.rstrip("/")
    where = f"{base}/manifest.json"
    try:
        with _open_uri(where) as fh:
            manifest = json.loads(fh.read())
    except FileNotFoundError as exc:
        raise PrefetchError(f"{where} does not exist") from exc
    except ValueError as exc:
        raise PrefetchError(f"{where} is not valid JSON") from exc
    except Exception as exc:
        raise PrefetchError(f"{where} cannot be read: {type(exc).__name__}: {exc}") from exc
    return manifest, where, lambda name, spec: (lambda: _open_uri(f"{base}/{name}"))


def _complete(dest: Path, sha256: str, size: int | None, verdicts: VerdictCache) -> bool:
    """A file already in place with the right size and hash (hashing only what changed)."""
    if not dest.is_file():
        return False
    stat = dest.stat()
    if size is not None and stat.st_size != size:
        return False
    if verdicts.is_verified(dest, sha256, stat):
        return True
    if sha256_file(dest) != sha256:
        return False
    verdicts.remember(dest, sha256, stat)
    return True


def _install_archive_member(spec: dict, sha256: str, dest: Path, progress: Progress, verified: set[Path]) -> str:
    """Copy one member of a pinned archive; the archive is fetched and hashed once per run, into the
    version folder (under the run's lock), and removed when the run ends."""
    archive = spec["archive"]
    zip_path = dest.parent / f".archive-{archive['sha256'][:16]}.zip"
    if zip_path not in verified:
        if not (zip_path.is_file() and sha256_file(zip_path) == archive["sha256"]):
            label = f"{archive['urls'][0].rsplit('/', 1)[-1]} (holding {archive['member']})"
            _copy_verified(_first_reachable(archive["urls"], label), zip_path, archive["sha256"], archive.get("size"), progress)
        verified.add(zip_path)
    with zipfile.ZipFile(zip_path) as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        if archive["member"] not in names:
            raise PrefetchError(f"{archive['member']} is not in {archive['urls'][0]}")
        return _copy_verified(lambda: zf.open(names[archive["member"]]), dest, sha256, spec.get("size"), progress)


def _check(manifest: dict, where: str, version: str | None, target_of: Callable[[str], Path]) -> tuple[str, Any]:
    """The version to install and the set the manifest describes, checked by the pipeline's parser."""
    if not isinstance(manifest, dict):
        raise PrefetchError(f"{where} is not a JSON object; nothing was copied")
    version = version or str(manifest.get("version") or "")
    if not plain_name(version):
        raise PrefetchError(f"a model set needs a plain version name (got {version!r}); pass --version")
    try:
        return version, parse_manifest(manifest, target_of(version), where)
    except ModelSetInvalid as exc:
        raise PrefetchError(f"{exc.message}; nothing was copied") from exc


def _remove_unfinished(target: Path, touched: set[Path], created: list[Path]) -> None:
    """Under the lock, after a failure: partial files and archives this run started, and the version
    folder if this run made it and it holds nothing complete."""
    for path in touched:
        path.unlink(missing_ok=True)
    for stale in target.glob(".*archive-*.zip*"):
        stale.unlink(missing_ok=True)
    if target in created:  # a folder holding files this run completed and verified stays, for the next run
        with contextlib.suppress(OSError):
            target.rmdir()


def prefetch(source: str | dict, model_path: Path, version: str | None = None, make_current: bool = False,
             progress: Progress | None = None) -> PrefetchResult:
    progress = progress or Progress()
    root = Path(model_path)
    manifest, where, opener = _plan(source)
    source = source if isinstance(source, str) else where
    version, model_set = _check(manifest, where, version, lambda v: root / v)
    target = root / version
    result = PrefetchResult(version=version, directory=target)
    created: list[Path] = []  # folders this run made, outermost first
    try:
        with _locked(root / f".prefetch-{version}.lock", created):
            touched: set[Path] = set()
            try:
                _make_folders(target, created)
                _install(manifest, model_set, source, opener, target, progress, result, touched)
                if make_current:
                    atomic_symlink(root / "current", version)
            except BaseException:
                _remove_unfinished(target, touched, created)
                raise
    except BaseException as exc:
        for folder in reversed(created):  # the model root (and its parents) if this run made them
            if folder != target:
                try:
                    folder.rmdir()
                except OSError:
                    break
        if isinstance(exc, OSError):
            raise PrefetchError(f"cannot write the model set to {target}: {exc}") from exc
        raise
    return result


def _install(manifest: dict, model_set: Any, source: str, opener: Callable, target: Path, progress: Progress,
             result: PrefetchResult, touched: set[Path]) -> None:
    """Copy what is missing, verify it, then write the manifest: the set is complete once it is there."""
    verdicts = VerdictCache(target, None)
    archives: set[Path] = set()
    try:
        for role, spec in manifest["models"].items():
            entry = model_set.models[role]
            dest = entry.path
            name = dest.name
            if _complete(dest, entry.sha256, entry.size, verdicts):
                result.reused.append(name)
                progress.say(f"{name}: already present and verified")
                continue
            progress.say(f"{name}: fetching")
            touched.add(dest.parent / f".{name}.partial")
            try:
                if "archive" in spec:
                    outcome = _install_archive_member(spec, entry.sha256, dest, progress, archives)
                else:
                    outcome = _copy_verified(opener(name, spec), dest, entry.sha256, entry.size, progress)
            except PrefetchError:
                raise
            except Exception as exc:  # reading the source (fsspec, HTTP) or writing here: name the file
                raise PrefetchError(f"{name}: copying from {source} failed: {type(exc).__name__}: {exc}") from exc
            verdicts.remember(dest, entry.sha256)  # hashed while copying: the first start need not
            (result.resumed if outcome == "resumed" else result.copied).append(name)
            progress.say(f"{name}: {outcome} and verified")
        write_manifest_file(target, manifest_document(str(manifest.get("name", target.name)), target.name,
                                                      manifest["models"]))
    finally:
        if result.copied or result.resumed or result.reused:
            verdicts.save()  # files verified so far need not be hashed again, even after a failure
        for stale in target.glob(".archive-*.zip"):
            stale.unlink(missing_ok=True)
