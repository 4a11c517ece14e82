"""Shared fixtures: real photographs and the real SCRFD from ../shared, stand-in models for the rest."""

from __future__ import annotations

import base64
import importlib.util
import struct
import threading
import zlib
from pathlib import Path

import pytest
import requests

from devtools.standins import write_test_models
from pipeline import Fuser, ImageLimits, Settings, load_fuser, overlap

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCRFD = SHARED / "models" / "scrfd_2.5g_bnkps.onnx"
IMAGES = SHARED / "images"


def helper_slots(monkeypatch: pytest.MonkeyPatch, count: int, busy: int = 0) -> None:
    """`count` helper threads for pipeline/overlap.py whatever the runner's CPUs, `busy` of them taken by
    someone else; the real ones come back after the test (or the `monkeypatch.context()`)."""
    slots = threading.BoundedSemaphore(count)
    for _ in range(busy):
        slots.acquire()
    monkeypatch.setattr(overlap, "HELPER_THREADS", count)
    monkeypatch.setattr(overlap, "_slots", slots)


def insightface_image(name: str) -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("insightface is not installed (it ships t1.jpg)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / name
    if not path.is_file():
        pytest.skip(f"insightface does not ship {name}")
    return path


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared is not checked out)")
    return path


@pytest.fixture(scope="session")
def t1_path() -> Path:
    return insightface_image("t1.jpg")


@pytest.fixture(scope="session")
def scrfd_path() -> Path:
    return shared_file("models", "scrfd_2.5g_bnkps.onnx")


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory, scrfd_path: Path) -> Path:
    """A stand-in model set with the real SCRFD detector, at `<root>/test` with `current` -> test."""
    root = tmp_path_factory.mktemp("models")
    write_test_models(root, detector=scrfd_path)
    return root


@pytest.fixture(scope="session")
def settings(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        model_path=model_root,
        cache_path=tmp_path_factory.mktemp("cache"),
        limits=ImageLimits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000),
    )


@pytest.fixture(scope="session")
def fuser(settings: Settings) -> Fuser:
    return load_fuser(settings)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk as written by hand: length, type, data and CRC (PNG spec, section 5)."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_parts(rgb, rows: int | None = None) -> tuple[bytes, bytes, bytes]:
    """A hand-made 8-bit RGB PNG of `rgb` (HxWx3 uint8) as (signature with IHDR, IDAT, IEND), so tests can
    put chunks between them; `rows`: only that many rows in the compressed data (a file that ends early)."""
    from pipeline.png_chunks import SIGNATURE

    height, width = rgb.shape[:2]
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb[:rows])  # filter type 0 on every row
    head = SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return head, png_chunk(b"IDAT", zlib.compress(raw)), png_chunk(b"IEND", b"")


def fuse_multipart(server, target: bytes | None = None, **fields) -> requests.Response:
    """A multipart fusion of obama.jpg into biden.jpg (or `target`) with these option fields."""
    files = {"source": shared_file("images", "obama.jpg").read_bytes(),
             "target": target or shared_file("images", "biden.jpg").read_bytes()}
    return requests.post(server.url + "/", files=files, data=fields, timeout=120)


def fuse_json(server, **options) -> requests.Response:
    """The same fusion as a JSON body with base64 images and these `options`."""
    body = {"source": base64.b64encode(shared_file("images", "obama.jpg").read_bytes()).decode(),
            "target": base64.b64encode(shared_file("images", "biden.jpg").read_bytes()).decode(), "options": options}
    return requests.post(server.url + "/", json=body, timeout=120)


def assert_bad_options(r: requests.Response, *named: str) -> None:
    """A 400 problem whose detail names each of `named`."""
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    for word in named:
        assert word in r.json()["detail"], (word, r.json())


class RowCounter:
    """A real session that records the rows of each run, and which thread made each run (plain or bound:
    `run_with_iobinding`) with which CUDA graph id (`gpu_graph_id`, None when not given); with `delay_s`,
    each run takes at least that long, so that callers arriving together overlap one run."""

    def __init__(self, session, delay_s: float = 0.0) -> None:
        self.session, self.rows, self.delay_s = session, [], delay_s
        self.threads: set[str] = set()
        self.graph_ids: dict[str, set[str | None]] = {"run": set(), "bound": set()}

    def __getattr__(self, name):
        return getattr(self.session, name)

    def _note(self, kind: str, options) -> None:
        self.threads.add(threading.current_thread().name)
        self.graph_ids[kind].add(options.get_run_config_entry("gpu_graph_id") if options else None)

    def run(self, names, feeds, options=None):
        self._note("run", options)
        self.rows.append(len(next(iter(feeds.values()))))
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        return self.session.run(names, feeds, options)

    def run_with_iobinding(self, binding, options=None):
        self._note("bound", options)
        return self.session.run_with_iobinding(binding, options)
