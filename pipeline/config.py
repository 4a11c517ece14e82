"""Pipeline settings, and the one environment parser every package uses.

Settings are read once into immutable objects, so that a request never sees a half-changed
configuration and tests can build settings without touching `os.environ`. `EnvReader` is the only
place that turns environment strings into booleans and numbers: one spelling of true and false for
every variable (`TRT_FP16=off` is off), and a bad value is recorded as a problem with the variable's
name instead of raising at import. The failure policy is the same everywhere: a problem keeps the
process not ready, with the reason in `/readyz` and the log (see README, Configuration).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MODEL_PATH = "./models"
DEFAULT_VIDEO_MAX_SECONDS = 600.0
DEFAULT_VIDEO_MAX_PIXELS = 3840 * 2160
DEFAULT_VIDEO_SEGMENT_SECONDS = 4.0
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """One or more settings have values that cannot be used; the message names each variable."""


def provider_words(spec: str) -> list[str]:
    """EXECUTION_PROVIDERS as its lower-case words (`cuda,cpu` -> ["cuda", "cpu"]); ["auto"] when it names none."""
    return [p.strip().lower() for p in spec.split(",") if p.strip()] or ["auto"]


class EnvReader:
    """Typed reads of environment variables that collect problems instead of raising.

    An empty or unset variable means its default. A value that cannot be parsed is recorded in
    `problems` and its default is used, so the caller decides once what a problem means.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.problems: list[str] = []

    def str(self, name: str, default: str | None = None) -> str | None:
        raw = self.env.get(name, "")
        return raw.strip() if raw and raw.strip() else default

    def list(self, name: str) -> tuple[str, ...] | None:
        """A comma-separated list (its non-empty items); None when the variable is unset or blank."""
        raw = self.str(name)
        return None if raw is None else tuple(p.strip() for p in raw.split(",") if p.strip())

    def bool(self, name: str, default: bool) -> bool:
        raw = (self.str(name) or "").lower()
        if not raw:
            return default
        if raw in TRUE_WORDS:
            return True
        if raw in FALSE_WORDS:
            return False
        self.problems.append(f"{name} must be one of true/false/1/0/yes/no/on/off, got {raw!r}")
        return default

    def int(self, name: str, default: int, minimum: int | None = None) -> int:
        return self._number(name, default, minimum, int)

    def float(self, name: str, default: float, minimum: float | None = None) -> float:
        return self._number(name, default, minimum, float)

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self.str(name)
        if raw is None:
            return default
        if raw not in allowed:
            self.problems.append(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
            return default
        return raw

    def _number(self, name, default, minimum, kind):
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            self.problems.append(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}")
            return default
        if minimum is not None and value < minimum:
            self.problems.append(f"{name} must be at least {minimum}, got {raw!r}")
            return default
        return value

    def raise_problems(self) -> None:
        """Raise one ConfigError naming every bad variable, if there was any."""
        raise_problems(self.problems)


def raise_problems(problems: Sequence[str]) -> None:
    """One ConfigError naming every bad variable, whichever package's settings they came from."""
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset, not the host's count): what the pools of
    helper threads (paste, JPEG strips, sources beside the target) are sized by. A CPU limit (a CFS quota,
    as Kubernetes sets for `limits.cpu`) is not a cpuset and is not seen here."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


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
class VideoLimits:
    """What a video may be (checked by `pipeline.video.probe` before a frame is decoded), and how long
    a segment of the fan-out is: VIDEO_MAX_SECONDS, VIDEO_MAX_PIXELS, VIDEO_SEGMENT_SECONDS."""

    max_seconds: float = DEFAULT_VIDEO_MAX_SECONDS
    max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS
    segment_seconds: float = DEFAULT_VIDEO_SEGMENT_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> VideoLimits:
        """Read the video variables; raises ConfigError naming every bad one."""
        read = EnvReader(env)
        limits = cls.read(read)
        read.raise_problems()
        return limits

    @classmethod
    def read(cls, read: EnvReader) -> VideoLimits:
        """The video variables through `read`, whose problems the caller raises (the function's
        configuration does, so a bad value keeps /readyz at 503 naming it)."""
        limits = cls(
            max_seconds=read.float("VIDEO_MAX_SECONDS", DEFAULT_VIDEO_MAX_SECONDS, minimum=0.001),
            max_pixels=read.int("VIDEO_MAX_PIXELS", DEFAULT_VIDEO_MAX_PIXELS, minimum=1),
            segment_seconds=read.float("VIDEO_SEGMENT_SECONDS", DEFAULT_VIDEO_SEGMENT_SECONDS, minimum=0.001),
        )
        read.bool("VIDEO_NVENC", True)  # read where the encoder is chosen (video/output.py); checked here too
        return limits


@dataclass(frozen=True)
class GpuSettings:
    """CUDA and TensorRT provider options that matter for start-up time and memory on GPUs.

    `conv_algo_search` is HEURISTIC: the runtime's default, EXHAUSTIVE, benchmarks every convolution on
    first use and makes warm-up slow. `arena_extend_strategy` kSameAsRequested keeps the CUDA arena
    close to what the models need. TensorRT engines and timing caches live under CACHE_PATH so a
    restarted pod reuses what the previous one built.
    """

    device_id: int = 0
    conv_algo_search: str = "HEURISTIC"
    arena_extend_strategy: str = "kSameAsRequested"
    mem_limit_mb: int | None = None
    trt_fp16: bool = True
    trt_max_workspace_mb: int = 2048
    name: str = ""  # NVIDIA_GPU_NAME: the GPU model in artefact keys, when set (else read from the device)
    # CUDA_GRAPHS: the roles whose runs replay as CUDA graphs (pipeline/cuda_graph.py), `all`, or none (off)
    cuda_graphs: tuple[str, ...] = ()
    # CUDA_EARLY_CONTEXT: a serving process makes the GPU's context beside its imports (pipeline/cuda_context.py)
    early_context: bool = True


@dataclass(frozen=True)
class BatchSettings:
    """Batching of model runs (pipeline/batching.py, README Configuration).

    `wait_ms` (BATCH_WAIT_MS) is 0 unless set: merging runs across requests is off by default on the
    GPU and the CPU alike. On the CPU a batch of n costs n runs (SCRFD: 1 frame 49-61 ms, 4 frames
    211-215 ms). On an H100 (`python -m bench.gpu`, README GPU) merging at 2 ms took a 1080p pod from
    138 to 39 requests/s at concurrency 32 (the detect stage from 11 to 151 ms, swap from 9 to 59 ms),
    while one run for all faces of a frame, which needs no wait, gave Solvay 1.3-1.6x. `max_size` bounds
    the rows of one run, frames and faces alike; 1 turns every kind of batching off (no batch axis is
    prepared, faces are swapped one at a time).
    """

    wait_ms: float = 0.0
    max_size: int = 32

    @property
    def wait(self) -> float:
        """The micro-batching wait of every session: BATCH_WAIT_MS, and 0 when batches hold one row."""
        return self.wait_ms if self.max_size > 1 else 0.0


def _read_cuda_graphs(read: EnvReader) -> tuple[str, ...]:
    """CUDA_GRAPHS as roles (checked against the model set when it loads), `("all",)`, or none: unset,
    `off` (or another false word) and `none`. `all` beside role names is a problem."""
    roles = tuple(item.lower() for item in read.list("CUDA_GRAPHS") or ())
    if len(roles) == 1 and roles[0] in FALSE_WORDS | {"none"}:
        return ()
    if "all" in roles and len(roles) > 1:
        read.problems.append(f"CUDA_GRAPHS is either all or a list of roles, got {','.join(roles)!r}")
        return ()
    return roles


def cpu_threads_shared(read: EnvReader) -> bool:
    """CPU_THREADS is `share`: each of WORKERS processes takes its share of the usable CPUs."""
    return (read.str("CPU_THREADS") or "").lower() == "share"


def read_cpu_threads(read: EnvReader) -> int:
    """CPU_THREADS: a number (0: each pool's own default), or `share`: this process's share of the usable
    CPUs. function/serve.py turns `share` into a number for each of WORKERS before they start; a process
    that meets `share` itself (one worker, `warmup prepare`, the CLI) is alone, and alone the defaults are
    its share (0)."""
    return 0 if cpu_threads_shared(read) else read.int("CPU_THREADS", 0, minimum=0)


@dataclass(frozen=True)
class Settings:
    """Everything the pipeline needs from the environment."""

    model_path: Path = Path(DEFAULT_MODEL_PATH)
    model_version: str = "current"
    execution_providers: str = "auto"
    cache_path: Path | None = None
    limits: ImageLimits = ImageLimits()
    optimised_graphs: bool = True
    gpu: GpuSettings = field(default_factory=GpuSettings)
    batching: BatchSettings = field(default_factory=BatchSettings)
    model_fp16: str = "auto"  # MODEL_FP16: auto (on for CUDA GPUs with tensor cores), on, off
    image_codec: str = "opencv"  # IMAGE_CODEC: opencv, or nvimgcodec (JPEG on the GPU, pipeline/gpu_jpeg.py)
    # CPU_THREADS: the threads of this process's native pools (OpenCV's, each ONNX Runtime session's
    # intra-op pool) and at most that many helper threads (pipeline/overlap.py); 0 leaves each its default
    cpu_threads: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the pipeline's variables; raises ConfigError naming every bad one."""
        read = EnvReader(env)
        cache = read.str("CACHE_PATH")
        mem_limit = read.int("CUDA_MEM_LIMIT_MB", 0, minimum=0)
        settings = cls(
            model_path=Path(read.str("MODEL_PATH", DEFAULT_MODEL_PATH) or DEFAULT_MODEL_PATH),
            model_version=read.str("MODEL_VERSION", "current") or "current",
            execution_providers=read.str("EXECUTION_PROVIDERS", "auto") or "auto",
            cache_path=Path(cache) if cache else None,
            optimised_graphs=read.bool("OPTIMISED_GRAPHS", True),
            limits=ImageLimits(
                max_bytes=read.int("MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, minimum=1),
                max_pixels=read.int("MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, minimum=1),
            ),
            gpu=GpuSettings(
                device_id=read.int("CUDA_DEVICE_ID", 0, minimum=0),
                conv_algo_search=read.choice("CUDA_CONV_ALGO_SEARCH", "HEURISTIC", ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")),
                arena_extend_strategy=read.choice("CUDA_ARENA_EXTEND_STRATEGY", "kSameAsRequested",
                                                  ("kSameAsRequested", "kNextPowerOfTwo")),
                mem_limit_mb=mem_limit or None,
                trt_fp16=read.bool("TRT_FP16", True),
                trt_max_workspace_mb=read.int("TRT_MAX_WORKSPACE_MB", 2048, minimum=1),
                name=read.str("NVIDIA_GPU_NAME") or "",
                cuda_graphs=_read_cuda_graphs(read),
                early_context=read.bool("CUDA_EARLY_CONTEXT", True),
            ),
            batching=BatchSettings(wait_ms=read.float("BATCH_WAIT_MS", 0.0, minimum=0.0),
                                   max_size=read.int("BATCH_MAX", 32, minimum=1)),
            model_fp16=read.choice("MODEL_FP16", "auto", ("auto", "on", "off")),
            image_codec=read.choice("IMAGE_CODEC", "opencv", ("opencv", "nvimgcodec")),
            cpu_threads=read_cpu_threads(read),
        )
        read.raise_problems()
        return settings

    @property
    def model_dir(self) -> Path:
        return self.model_path / self.model_version

    def resolved_cache_path(self) -> Path:
        return self.cache_path if self.cache_path is not None else default_cache_path(self.model_path)
