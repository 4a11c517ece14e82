"""ONNX Runtime sessions: provider choice and creation.

Sessions are created in the serving process, never at import time: CUDA does not survive a fork, and a
server that forks workers after importing the app (gunicorn) must create them in each worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from .config import ConfigError, GpuSettings, provider_words
from .errors import ModelSetInvalid, ProviderUnavailable

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")
GPU_PROVIDER_NAMES = frozenset({PROVIDER_NAMES["tensorrt"], PROVIDER_NAMES["cuda"]})


def is_auto(spec: str) -> bool:
    """EXECUTION_PROVIDERS leaves the choice to this runtime (`auto`, or nothing named)."""
    return provider_words(spec) == ["auto"]


def resolve_providers(spec: str, available: Sequence[str] | None = None) -> list[str]:
    """Turn EXECUTION_PROVIDERS (`auto` or e.g. `cuda,cpu`) into the runtime's provider names.

    `auto` keeps the TensorRT, CUDA, CPU order and drops what this runtime build lacks. An explicit list
    is honoured in its order; naming a provider that is not available is a configuration error (ConfigError:
    readiness names it in one line) rather than a silent fall back to the CPU, which would turn a GPU
    service into a very slow one.
    """
    available = list(ort.get_available_providers() if available is None else available)
    wanted = provider_words(spec)
    if wanted == ["auto"]:
        chosen = [PROVIDER_NAMES[p] for p in AUTO_ORDER if PROVIDER_NAMES[p] in available]
    else:
        unknown = [p for p in wanted if p not in PROVIDER_NAMES]
        if unknown:
            raise ConfigError(f"invalid configuration: EXECUTION_PROVIDERS: unknown provider(s) {unknown}; use auto "
                              f"or {list(PROVIDER_NAMES)}")
        chosen = [PROVIDER_NAMES[p] for p in wanted]
        missing = [p for p in chosen if p not in available]
        if missing:
            hint = ("; this is the CPU build of ONNX Runtime: a GPU needs onnxruntime-gpu instead (the `gpu` extra, "
                    "or the GPU image)") if GPU_PROVIDER_NAMES.isdisjoint(available) else ""
            raise ConfigError(f"invalid configuration: EXECUTION_PROVIDERS asks for {missing}, but this runtime offers "
                              f"only {available}{hint}")
    if not chosen:
        raise ConfigError(f"no usable execution provider among {available}")
    return chosen


def provider_options(providers: Sequence[str], cache_dir: Path, gpu: GpuSettings, cuda_graph: bool = False) -> list[dict]:
    """Per-provider options from the settings (see `GpuSettings` for why each one is set); `cuda_graph`:
    with CUDA graphs enabled on the CUDA provider (pipeline/cuda_graph.py)."""
    options: list[dict] = []
    for name in providers:
        if name == "CUDAExecutionProvider":
            opts = {
                "device_id": str(gpu.device_id),
                "cudnn_conv_algo_search": gpu.conv_algo_search,
                "arena_extend_strategy": gpu.arena_extend_strategy,
            }
            if gpu.mem_limit_mb:
                opts["gpu_mem_limit"] = str(gpu.mem_limit_mb * 1024 * 1024)
            if cuda_graph:
                opts["enable_cuda_graph"] = "1"
            options.append(opts)
        elif name == "TensorrtExecutionProvider":
            trt_dir = cache_dir / "tensorrt"
            for sub in ("engines", "timing"):
                (trt_dir / sub).mkdir(parents=True, exist_ok=True)
            options.append({
                "device_id": str(gpu.device_id),
                "trt_fp16_enable": gpu.trt_fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(trt_dir / "engines"),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(trt_dir / "timing"),
                "trt_max_workspace_size": str(gpu.trt_max_workspace_mb * 1024 * 1024),
            })
        else:
            options.append({})
    return options


def check_providers(role: str, file_name: str, session: ort.InferenceSession, requested: Sequence[str],
                    auto: bool) -> list[str]:
    """The providers `session` really runs on, refusing a silent fallback.

    ONNX Runtime does not fail when a provider cannot load (a missing CUDA or cuDNN library): it logs and
    runs on the next one, ending on the CPU. An explicit EXECUTION_PROVIDERS list must therefore be
    active as asked. With `auto`, TensorRT is a preference: a session on CUDA without it is accepted (and
    said in the log), but one that lost every GPU provider is refused.
    """
    active = list(session.get_providers())
    missing = [p for p in requested if p not in active]
    if not missing:
        return active
    gpu_asked = [p for p in requested if p != "CPUExecutionProvider"]
    if auto and any(p in active for p in gpu_asked):
        log.warning("%s (%s) runs on %s without %s", role, file_name, active, missing)
        return active
    raise ProviderUnavailable(f"{role} ({file_name}) runs on {', '.join(active)}, but EXECUTION_PROVIDERS asked for "
                              f"{', '.join(missing)}: that provider failed to load (see the log)")


def create_session(
    path: Path,
    providers: Sequence[str],
    options: ort.SessionOptions | None = None,
    provider_options: Sequence[dict] | None = None,
    log_failure: bool = True,
    threads: int = 0,
) -> ort.InferenceSession:
    """Create one inference session; a model the runtime cannot load is a model-set problem.

    `log_failure` False: the caller expects refusals it handles (CUDA graphs) and says what it does.
    `threads` > 0: the size of its intra-op pool (CPU_THREADS), else ONNX Runtime's default, one thread
    per physical core, which each of several worker processes would take for itself."""
    opts = options or ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # unused initializers (the swapper's emap) would warn on every start
    # Each session has its own intra-op pool whose threads spin after a run; with four sessions on a
    # few cores the spinning pools of the swapper and recognizer slowed the next detection by 30-100%.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=list(providers), provider_options=provider_options
        )
    except Exception as exc:  # the runtime raises its own exception types (Fail, InvalidGraph, ...)
        if log_failure:
            log.error("ONNX Runtime cannot load %s: %s", path, exc)  # the full path and message for the operator
        raise ModelSetInvalid(f"model file {path.name} cannot be loaded by ONNX Runtime ({type(exc).__name__})") from exc
