"""Pipeline settings read from the environment (see DESIGN.md, Configuration).

Read once into an immutable object so that a request never sees a half-changed configuration and tests
can build settings without touching `os.environ`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def default_cache_path(model_path: Path) -> Path:
    """A writable folder beside the models, else a folder under the system temp dir.

    The model volume is mounted read-only in production, so the fallback is the common case there;
    the manifests mount a writable cache volume and set CACHE_PATH explicitly.
    """
    beside = model_path.resolve().parent / ".facefusion-cache"
    try:
        beside.mkdir(parents=True, exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "facefusion-cache"


@dataclass(frozen=True)
class ImageLimits:
    """Limits checked before any pixel buffer is allocated."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class Settings:
    """Everything the pipeline needs from the environment."""

    model_path: Path = Path("./models")
    model_version: str = "current"
    execution_providers: str = "auto"
    cache_path: Path | None = None
    limits: ImageLimits = ImageLimits()
    optimised_graphs: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        model_path = Path(env.get("MODEL_PATH") or "./models")
        cache = env.get("CACHE_PATH")
        return cls(
            model_path=model_path,
            model_version=env.get("MODEL_VERSION") or "current",
            execution_providers=env.get("EXECUTION_PROVIDERS") or "auto",
            cache_path=Path(cache) if cache else None,
            optimised_graphs=(env.get("OPTIMISED_GRAPHS") or "true").strip().lower() not in ("0", "false", "no", "off"),
            limits=ImageLimits(
                max_bytes=_int(env, "MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES),
                max_pixels=_int(env, "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS),
            ),
        )

    @property
    def model_dir(self) -> Path:
        return self.model_path / self.model_version

    def resolved_cache_path(self) -> Path:
        return self.cache_path if self.cache_path is not None else default_cache_path(self.model_path)
