"""Races in the video fan-out's plumbing, on real fsspec stores and real threads: the input cache never
unlinks a file a caller holds and leaves no copy behind; a download past its deadline stops and leaves
no file; a lease held longer than its TTL is renewed, so nobody else takes it over."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

from function import leases, video_files
from function.problems import Problem


# -- the input cache --------------------------------------------------------------------------------------
def test_cached_inputs_stay_while_held_and_none_is_left_behind(tmp_path):
    """Nine callers over three inputs (capacity two) all hold their file before any opens it: every one
    reads its own input, each input is downloaded once, and once they are done only the cached copies
    are on disk; inputs used later push those out and nothing else is left in the folder."""
    fs = fsspec.filesystem("memory")
    base = f"/inputs-{uuid.uuid4().hex}"
    contents = {f"clip{i}": os.urandom(1000 + i) for i in range(5)}
    for name, data in contents.items():
        fs.pipe(f"{base}/{name}.mp4", data)
    folder = tmp_path / "inputs"
    cache = video_files.InputCache(capacity=2, folder=folder)
    names = ["clip0", "clip1", "clip2"] * 3
    on_disk: list[list[Path]] = []
    everyone_holds = threading.Barrier(len(names), action=lambda: on_disk.append(sorted(folder.iterdir())))
    errors: list[BaseException] = []

    def use(name: str) -> None:
        try:
            with cache.get(name, f"memory://{base}/{name}.mp4", ".mp4", 1 << 20, 10) as path:
                everyone_holds.wait(30)  # every input is in use at once: more than the cache holds
                assert path.read_bytes() == contents[name]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(on_disk) == 1 and len(on_disk[0]) == 3  # one download per input, none unlinked while held
    assert len(list(folder.iterdir())) == 2  # released: back to the capacity
    for name in ("clip3", "clip4"):
        with cache.get(name, f"memory://{base}/{name}.mp4", ".mp4", 1 << 20, 10) as path:
            assert path.read_bytes() == contents[name]
            held = path
    assert sorted(p.read_bytes() for p in folder.iterdir()) == sorted([contents["clip3"], contents["clip4"]])
    assert held.exists()


# -- a download past its deadline --------------------------------------------------------------------------
class Gate:
    """What the test controls and observes of one download: when the source opens, how many bytes it
    handed out, whether it was closed."""

    def __init__(self) -> None:
        self.data = os.urandom(4 << 20)
        self.opened = threading.Event()
        self.closed = threading.Event()
        self.handed_out = 0


class GatedFile(io.RawIOBase):
    """A source that hands out its bytes in small reads and records how many it handed out."""

    def __init__(self, gate: Gate) -> None:
        self._gate, self._pos = gate, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._gate.data[self._pos:self._pos + min(len(buffer), 64 << 10)]
        buffer[:len(chunk)] = chunk
        self._pos += len(chunk)
        self._gate.handed_out += len(chunk)
        return len(chunk)

    def close(self) -> None:
        super().close()
        self._gate.closed.set()


class GatedFS(AbstractFileSystem):
    """A store whose open waits for the test's gate: a download that is still opening its source when
    the caller's deadline passes."""

    protocol = "gatedtest"
    cachable = False
    gate = Gate()

    def info(self, path, **kwargs):
        return {"name": path, "size": len(self.gate.data), "type": "file"}

    def _open(self, path, mode="rb", **kwargs):
        self.gate.opened.wait(30)
        return io.BufferedReader(GatedFile(self.gate), buffer_size=64 << 10)


def test_a_download_past_its_deadline_stops_and_leaves_no_file(tmp_path):
    gated = GatedFS.gate = Gate()
    fsspec.register_implementation("gatedtest", GatedFS, clobber=True)
    dest = tmp_path / "clip.mp4"
    with pytest.raises(Problem) as caught:
        # the gate stays shut, so the 504 is certain; 0.5 s leaves the size look-up (which has the same
        # deadline) time enough on a busy machine to reach the open that the rest of the test waits on
        video_files.fetch("gatedtest://clip.mp4", dest, 1 << 30, timeout=0.5)
    assert caught.value.status == 504
    gated.opened.set()  # the source opens only now, after the caller gave up
    deadline = time.time() + 30
    while time.time() < deadline and not (gated.closed.is_set() and not dest.exists()):
        time.sleep(0.05)
    assert gated.closed.is_set() and not dest.exists()
    assert gated.handed_out < len(gated.data)  # the copy stopped instead of reading the whole clip
    assert not list(tmp_path.iterdir())


# -- leases held longer than their TTL ---------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_a_lease_held_past_its_ttl_is_renewed_and_released(tmp_path, scheme):
    uri = f"memory:///held-{uuid.uuid4().hex}/part.mp4" if scheme == "memory" else f"file://{tmp_path}/part.mp4"
    fs, path = fsspec.core.url_to_fs(uri + leases.LEASE_SUFFIX)
    refused = 0
    with leases.held(uri, ttl=2, timeout=5) as owner:  # renewed every 2/3 s: a 1 s TTL failed on a stall of 0.67 s
        until = time.time() + 6  # three TTLs of work
        while time.time() < until:
            with pytest.raises(Problem) as caught:
                leases.claim(uri, ttl=2, timeout=5)
            assert caught.value.status == 429 and caught.value.code == "in-progress"
            refused += 1
            time.sleep(0.2)
        assert fs.exists(path) and owner in fs.cat_file(path).decode()
    assert refused > 1
    assert not fs.exists(path)
    again = leases.claim(uri, ttl=1, timeout=5)  # free at once
    leases.release(uri, again, timeout=5)


def test_a_held_lease_refuses_a_second_holder_with_the_retryable_problem(tmp_path):
    uri = f"file://{tmp_path}/out.mp4"
    with leases.held(uri, ttl=60, timeout=5):
        with pytest.raises(Problem) as caught, leases.held(uri, ttl=60, timeout=5):
            pass
        assert caught.value.status == 429 and caught.value.retry_after
        with leases.held(uri, ttl=60, timeout=5, or_none=True) as owner:
            assert owner is None
    with leases.held(uri, ttl=60, timeout=5, or_none=True) as owner:
        assert owner is not None
