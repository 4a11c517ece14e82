"""Derived artefacts: pre-optimised graphs whose weights sit in a page-aligned external file.

A session created from the original model parses the protobuf, lets the graph optimiser copy every
weight and pre-packs them: seconds of CPU and a private copy of the weights in every process. The
runtime can instead save the optimised graph once with its initializers in an external data file;
loading that with optimisation and pre-packing off maps the weights from the page cache, where every
process and pod on the node shares them.

An artefact is only valid for the model bytes, runtime version, execution providers and hardware it
was built with, so that tuple is its key. The swapper's `emap` is dropped from optimised graphs (no
node uses it) and lives in its own side file (see `swap.load_emap`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from .manifest import ModelEntry

log = logging.getLogger(__name__)
DATA_SUFFIX = ".data"


@functools.lru_cache(maxsize=8)
def _hardware(gpu: str) -> str:
    """CPU model (graph rewrites can be ISA-specific) and, when visible, the GPU model."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}|{gpu}"


def artefact_key(entry: ModelEntry, providers: Sequence[str], gpu: str = "") -> str:
    raw = "|".join([entry.sha256, ort.__version__, ",".join(providers), _hardware(gpu)])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def optimised_path(entry: ModelEntry, providers: Sequence[str], cache_dir: Path, gpu: str = "") -> Path:
    return cache_dir / "graphs" / artefact_key(entry, providers, gpu) / f"{entry.role}.onnx"


def build_optimised(entry: ModelEntry, providers: Sequence[str], cache_dir: Path, gpu: str = "") -> Path:
    """Optimise `entry` once and save graph plus aligned external weights; atomic for concurrent builders."""
    target = optimised_path(entry, providers, cache_dir, gpu)
    if target.is_file() and (target.parent / (target.name + DATA_SUFFIX)).exists():
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent.parent))
    try:
        opts = ort.SessionOptions()
        # On the CPU the layout rewrites of ENABLE_ALL (NCHWc convolutions) are what make detection fast;
        # they are ISA-specific, which the key covers. GPU providers optimise their own partitions.
        cpu_first = providers[0] == "CPUExecutionProvider"
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if cpu_first else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        )
        opts.optimized_model_filepath = str(work / target.name)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", target.name + DATA_SUFFIX)
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        opts.log_severity_level = 3
        ort.InferenceSession(str(entry.path), sess_options=opts, providers=list(providers))
        target.parent.mkdir(parents=True, exist_ok=True)
        for name in (target.name + DATA_SUFFIX, target.name):  # the graph last: its presence means complete
            src = work / name
            if src.exists():
                os.replace(src, target.parent / name)
        if not (target.parent / (target.name + DATA_SUFFIX)).exists():
            (target.parent / (target.name + DATA_SUFFIX)).touch()  # a model with no large weights
        log.info("built optimised graph for %s at %s", entry.path.name, target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fast_load_options() -> ort.SessionOptions:
    """Options for loading a pre-optimised graph: no second optimisation pass, no weight copies."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.disable_prepacking", "1")
    return opts
