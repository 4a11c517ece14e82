"""Shared fixtures: real photographs and the real SCRFD from ../shared, stand-in models for the rest."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from devtools.standins import write_test_models
from pipeline import Fuser, ImageLimits, Settings, load_fuser

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCRFD = SHARED / "models" / "scrfd_2.5g_bnkps.onnx"
IMAGES = SHARED / "images"


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
