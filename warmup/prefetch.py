"""Copy a model set onto the shared volume, verified, atomically and once.

An init container (or a one-off Job) runs `python -m warmup prefetch SOURCE` before the function starts:

- SOURCE is any fsspec URI of a folder holding `manifest.json` and the files it names (`s3://`, `gs://`,
  `https://`, `file://`, `memory://`), or `default` for the pinned buffalo_l + inswapper_128 set;
- every file is hashed while it is copied and must match the manifest's SHA-256, or the run fails
  naming the file and leaves nothing behind but what was already complete;
- files are written as `.NAME.partial` and renamed into place, and `manifest.json` is written last,
  so a pod never sees a partial file or a set whose files are not all there;
- several init containers may run at once on the same volume: an exclusive lock per version makes the
  others wait, and they then find the files complete and reuse them;
- a killed run resumes a partial file where the source can seek, and starts it over when it cannot or
  when the resumed bytes turn out wrong.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import fsspec

from pipeline import VerdictCache, sha256_file

from .default_set import DEFAULT_SET

CHUNK = 8 * 1024 * 1024
MANIFEST_KEYS = ("file", "sha256", "size", "kind", "input_size")


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


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def _plan(source: str) -> tuple[dict, Callable[[str, dict], Callable[[], IO[bytes]]]]:
    """The manifest to install and, per entry, how to open its bytes."""
    if source == "default":
        return DEFAULT_SET, lambda name, spec: _first_reachable(spec["urls"], name)
    base = source.rstrip("/")
    try:
        with _open_uri(f"{base}/manifest.json") as fh:
            manifest = json.loads(fh.read())
    except FileNotFoundError as exc:
        raise PrefetchError(f"{base}/manifest.json does not exist") from exc
    except ValueError as exc:
        raise PrefetchError(f"{base}/manifest.json is not valid JSON") from exc
    except Exception as exc:
        raise PrefetchError(f"{base}/manifest.json cannot be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise PrefetchError(f"{base}/manifest.json has no 'models' object")
    return manifest, lambda name, spec: (lambda: _open_uri(f"{base}/{name}"))


def _complete(dest: Path, spec: dict, verdicts: VerdictCache) -> bool:
    """A file already in place with the right size and hash (hashing only what changed)."""
    if not dest.is_file():
        return False
    stat = dest.stat()
    if spec.get("size") is not None and stat.st_size != spec["size"]:
        return False
    if verdicts.is_verified(dest, spec["sha256"], stat):
        return True
    if sha256_file(dest) != spec["sha256"]:
        return False
    verdicts.remember(dest, spec["sha256"], stat)
    return True


def _install_archive_member(spec: dict, dest: Path, root: Path, progress: Progress, verified: set[Path]) -> str:
    """Copy one member of a pinned archive; the archive is fetched and hashed once per run."""
    archive = spec["archive"]
    zip_path = root / f".archive-{archive['sha256'][:16]}.zip"
    if zip_path not in verified:
        if not (zip_path.is_file() and sha256_file(zip_path) == archive["sha256"]):
            label = f"{archive['urls'][0].rsplit('/', 1)[-1]} (holding {archive['member']})"
            _copy_verified(_first_reachable(archive["urls"], label), zip_path, archive["sha256"], archive.get("size"), progress)
        verified.add(zip_path)
    with zipfile.ZipFile(zip_path) as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        if archive["member"] not in names:
            raise PrefetchError(f"{archive['member']} is not in {archive['urls'][0]}")
        return _copy_verified(lambda: zf.open(names[archive["member"]]), dest, spec["sha256"], spec.get("size"), progress)


def prefetch(source: str, model_path: Path, version: str | None = None, make_current: bool = False,
             progress: Progress | None = None) -> PrefetchResult:
    progress = progress or Progress()
    manifest, opener = _plan(source)
    version = version or str(manifest.get("version") or "")
    if not version or "/" in version or version in (".", "..", "current"):
        raise PrefetchError(f"a model set needs a plain version name (got {version!r}); pass --version")
    root = Path(model_path)
    target = root / version
    result = PrefetchResult(version=version, directory=target)
    with _locked(root / f".prefetch-{version}.lock"):
        target.mkdir(parents=True, exist_ok=True)
        verdicts = VerdictCache(target, None)
        archives: set[Path] = set()
        for role, spec in manifest["models"].items():
            name = spec.get("file", "")
            if not name or "/" in name or name.startswith("."):
                raise PrefetchError(f"manifest entry {role!r} has an invalid file name {name!r}")
            dest = target / name
            if _complete(dest, spec, verdicts):
                result.reused.append(name)
                progress.say(f"{name}: already present and verified")
                continue
            progress.say(f"{name}: fetching")
            if "archive" in spec:
                outcome = _install_archive_member(spec, dest, root, progress, archives)
            else:
                outcome = _copy_verified(opener(name, spec), dest, spec["sha256"], spec.get("size"), progress)
            verdicts.remember(dest, spec["sha256"])  # hashed while copying: the first start need not
            (result.resumed if outcome == "resumed" else result.copied).append(name)
            progress.say(f"{name}: {outcome} and verified")
        clean = {"name": manifest.get("name", version), "version": version,
                 "models": {r: {k: v for k, v in s.items() if k in MANIFEST_KEYS} for r, s in manifest["models"].items()}}
        tmp = target / ".manifest.json.partial"
        tmp.write_text(json.dumps(clean, indent=2) + "\n")
        os.replace(tmp, target / "manifest.json")
        verdicts.save()
        for stale in root.glob(".archive-*.zip"):
            stale.unlink(missing_ok=True)
        if make_current:
            link = root / f".current-{os.getpid()}"
            link.unlink(missing_ok=True)
            os.symlink(version, link)
            os.replace(link, root / "current")
    return result
