"""ONNX Runtime sessions: provider choice and creation.

Sessions are created lazily in the serving process, never at import time: functions-framework imports
the module in gunicorn's master and forks workers, and CUDA does not survive a fork.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnxruntime as ort

from .errors import ModelSetInvalid

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


def resolve_providers(spec: str, available: Sequence[str] | None = None) -> list[str]:
    """Turn EXECUTION_PROVIDERS (`auto` or e.g. `cuda,cpu`) into the runtime's provider names.

    `auto` keeps the TensorRT, CUDA, CPU order and drops what this runtime build lacks. An explicit list
    is honoured in its order; naming a provider that is not available is a configuration error rather
    than a silent fall back to the CPU, which would turn a GPU service into a very slow one.
    """
    available = list(ort.get_available_providers() if available is None else available)
    wanted = [p.strip().lower() for p in spec.split(",") if p.strip()] or ["auto"]
    if wanted == ["auto"]:
        chosen = [PROVIDER_NAMES[p] for p in AUTO_ORDER if PROVIDER_NAMES[p] in available]
    else:
        unknown = [p for p in wanted if p not in PROVIDER_NAMES]
        if unknown:
            raise ValueError(f"EXECUTION_PROVIDERS: unknown provider(s) {unknown}; use auto or {list(PROVIDER_NAMES)}")
        chosen = [PROVIDER_NAMES[p] for p in wanted]
        missing = [p for p in chosen if p not in available]
        if missing:
            raise ValueError(f"EXECUTION_PROVIDERS asks for {missing}, but this runtime offers only {available}")
    if not chosen:
        raise ValueError(f"no usable execution provider among {available}")
    return chosen


def provider_options(providers: Sequence[str], cache_dir: Path, env: Mapping[str, str] | None = None) -> list[dict]:
    """Per-provider options that matter for start-up time and memory on GPUs, from the environment.

    CUDA: `CUDA_CONV_ALGO_SEARCH` (HEURISTIC here; the runtime's EXHAUSTIVE benchmarks every convolution
    on first use and makes warm-up slow), `CUDA_ARENA_EXTEND_STRATEGY` (kSameAsRequested keeps the
    arena close to what the models need), `CUDA_MEM_LIMIT_MB`, `CUDA_DEVICE_ID`.
    TensorRT: `TRT_FP16` (true), engine and timing caches under CACHE_PATH/tensorrt so a restarted pod
    reuses the engines built by the previous one, `TRT_MAX_WORKSPACE_MB`.
    """
    env = os.environ if env is None else env
    options: list[dict] = []
    for name in providers:
        if name == "CUDAExecutionProvider":
            opts = {
                "device_id": env.get("CUDA_DEVICE_ID", "0"),
                "cudnn_conv_algo_search": env.get("CUDA_CONV_ALGO_SEARCH", "HEURISTIC"),
                "arena_extend_strategy": env.get("CUDA_ARENA_EXTEND_STRATEGY", "kSameAsRequested"),
            }
            if env.get("CUDA_MEM_LIMIT_MB"):
                opts["gpu_mem_limit"] = str(int(env["CUDA_MEM_LIMIT_MB"]) * 1024 * 1024)
            options.append(opts)
        elif name == "TensorrtExecutionProvider":
            trt_dir = cache_dir / "tensorrt"
            for sub in ("engines", "timing"):
                (trt_dir / sub).mkdir(parents=True, exist_ok=True)
            options.append({
                "device_id": env.get("CUDA_DEVICE_ID", "0"),
                "trt_fp16_enable": env.get("TRT_FP16", "true").lower() not in ("0", "false", "no"),
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(trt_dir / "engines"),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(trt_dir / "timing"),
                "trt_max_workspace_size": str(int(env.get("TRT_MAX_WORKSPACE_MB", "2048")) * 1024 * 1024),
            })
        else:
            options.append({})
    return options


def create_session(
    path: Path,
    providers: Sequence[str],
    options: ort.SessionOptions | None = None,
    provider_options: Sequence[dict] | None = None,
) -> ort.InferenceSession:
    """Create one inference session; a model the runtime cannot load is a model-set problem."""
    opts = options or ort.SessionOptions()
    opts.log_severity_level = 3  # unused initializers (the swapper's emap) would warn on every start
    # Each session has its own intra-op pool whose threads spin after a run; with four sessions on a
    # few cores the spinning pools of the swapper and recognizer slowed the next detection by 30-100%.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=list(providers), provider_options=provider_options
        )
    except Exception as exc:  # the runtime raises its own exception types (Fail, InvalidGraph, ...)
        raise ModelSetInvalid(f"model file {path} cannot be loaded by ONNX Runtime: {exc}") from exc
