"""Derived artefacts: pre-optimised graphs whose weights sit in a page-aligned external file.

A session created from the original model parses the protobuf, lets the graph optimiser copy every
weight and pre-packs them: seconds of CPU and a private copy of the weights in every process. The
runtime can instead save the optimised graph once with its initializers in an external data file;
loading that with optimisation and pre-packing off maps the weights from the page cache, where every
process and pod on the node shares them.

An artefact is only valid for the model bytes, runtime version, execution providers and hardware it
was built with, and the recipe it was built to (`GraphRecipe`: a free batch axis, fp16, uint8 pixel input),
so that tuple is its key (with the kind's declared pixel normalisation, which a pixel-input graph bakes in). The swapper's `emap` is dropped from optimised graphs (no node uses it) and lives in its own
side file (see `swap.load_emap`).

The recipe's rewrites are kept only when a probe proves them (pipeline/batch_axis.py,
pipeline/precision.py, pipeline/pixel_input.py); what was kept and why not is written beside the graph
(`<role>.onnx.json`) and logged, so a refused rewrite costs one build, not a wrong answer. The pixel input
comes last: the batch axis and fp16 are decided on the float graph (fp16 keeps float32 inputs), and the
uint8 input is then put in front of whatever was kept, for kinds that declare a `pixel_format`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from .batch_axis import batch_matches, free_batch_axis
from .manifest import ModelEntry
from .models import kind_class
from .pixel_input import PixelFormat, pixels_match, with_pixel_input
from .precision import FP16_TOLERANCE, fp16_error, to_fp16

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)
DATA_SUFFIX = ".data"
NOTES_SUFFIX = ".json"
_MAX_REWRITE_BYTES = 2**31 - 1  # a protobuf above 2 GB cannot be serialised for the runtime


@dataclass(frozen=True)
class GraphRecipe:
    """What an optimised graph is built to: for which GPU, with a free batch axis, in fp16, taking the
    uint8 image (`pixels`, for kinds that declare their pixel normalisation)."""

    gpu: str = ""
    batch: bool = True
    fp16: bool = False
    pixels: bool = True

    def token(self) -> str:
        # rewrite=2: graphs built before the pixel input existed are rebuilt
        return f"{self.gpu}|batch={int(self.batch)}|fp16={int(self.fp16)}|pixels={int(self.pixels)}|rewrite=2"


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


def pixel_format(entry: ModelEntry) -> PixelFormat | None:
    """The pixel normalisation `entry`'s kind declares (None: the kind keeps a float input)."""
    cls = kind_class(entry.kind)
    return cls.pixel_format if cls is not None else None


def artefact_key(entry: ModelEntry, providers: Sequence[str], recipe: GraphRecipe = GraphRecipe()) -> str:
    pixels = pixel_format(entry) if recipe.pixels else None  # baked into the graph: another one, another key
    raw = "|".join([entry.sha256, ort.__version__, ",".join(providers), _hardware(recipe.gpu), recipe.token(),
                    repr(pixels) if pixels is not None else ""])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def optimised_path(entry: ModelEntry, providers: Sequence[str], cache_dir: Path, recipe: GraphRecipe = GraphRecipe()) -> Path:
    return cache_dir / "graphs" / artefact_key(entry, providers, recipe) / f"{entry.role}.onnx"


def graph_notes(graph: Path) -> dict:
    """What the build of `graph` kept of its recipe (`batch`, `fp16`, `pixels`) and why not (empty when unknown)."""
    try:
        return json.loads((graph.parent / (graph.name + NOTES_SUFFIX)).read_text())
    except (OSError, ValueError):
        return {}


def _rewritten(entry: ModelEntry, providers: Sequence[str], recipe: GraphRecipe) -> tuple[bytes | None, dict]:
    """The model with the recipe's rewrites that its probes accept (None: none kept), and the notes."""
    import onnx

    notes: dict = {"batch": False, "fp16": False, "pixels": False}
    model = onnx.load(str(entry.path))
    if model.ByteSize() > _MAX_REWRITE_BYTES:
        notes["why"] = "the model is above 2 GB; served as published"
        return None, notes

    def session(proto: onnx.ModelProto) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        # fatal only: a probe that fails (CodeFormer's weight cannot broadcast over a batch) is expected, and
        # our note says why; the runtime's own red error line would read as a broken start
        opts.log_severity_level = 4
        return ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=list(providers))

    original = session(model)
    kept, kept_session = model, original
    if recipe.batch:
        candidate = free_batch_axis(model)
        if candidate is None:
            notes["batch_why"] = "inputs or outputs have no fixed batch of 1 to free"
        else:
            try:
                batched = session(candidate)
                ok, why = batch_matches(original, batched)
            except Exception as exc:  # the runtime refuses the rewritten graph
                ok, why = False, f"the rewritten graph does not load ({type(exc).__name__})"
            if ok:
                kept, kept_session, notes["batch"] = candidate, batched, True
            else:
                notes["batch_why"] = why
    if recipe.fp16:
        try:
            half = to_fp16(kept)
            half_session = session(half)
            error = fp16_error(original, half_session)
        except Exception as exc:  # the converter or the runtime refuses
            error, notes["fp16_why"] = float("inf"), f"conversion failed ({type(exc).__name__}: {str(exc)[:160]})"
        notes["fp16_error"] = error if error != float("inf") else None
        if error <= FP16_TOLERANCE:
            kept, kept_session, notes["fp16"] = half, half_session, True
        else:
            notes.setdefault("fp16_why", f"outputs differ from fp32 by {error:.3g} of their range (limit {FP16_TOLERANCE})")
    cls = kind_class(entry.kind) if recipe.pixels else None
    if cls is not None and cls.pixel_format is not None:  # last: in front of the kept batch axis and fp16
        kept = _with_pixels(kept, kept_session, cls.pixel_format, entry.input_size or cls.default_input_size,
                            session, notes)
    for what in ("batch", "fp16", "pixels"):
        if getattr(recipe, what) and not notes[what] and f"{what}_why" in notes:
            log.info("%s: no %s graph: %s", entry.path.name, what, notes[f"{what}_why"])
    return (kept.SerializeToString() if kept is not model else None), notes


def _with_pixels(kept: onnx.ModelProto, kept_session: ort.InferenceSession, fmt: PixelFormat, size: tuple[int, int],
                 session: Callable[[onnx.ModelProto], ort.InferenceSession],
                 notes: dict) -> onnx.ModelProto:
    """`kept` taking the uint8 image when the probe proves it equal to `fmt.blob` + `kept` (pixel_input.py);
    else `kept` as it was, and the notes say why. `size`: the probe images' (width, height) where the
    graph's are not fixed."""
    candidate, why = with_pixel_input(kept, fmt)
    if candidate is None:
        notes["pixels_why"] = why
        return kept
    try:
        pixel_session = session(candidate)
    except Exception as exc:  # the runtime refuses the rewritten graph
        notes["pixels_why"] = f"the uint8 graph does not load ({type(exc).__name__})"
        return kept
    ok, why, error = pixels_match(kept_session, pixel_session, fmt, size)
    notes["pixels_error"] = error if error != float("inf") else None
    if not ok:
        notes["pixels_why"] = why
        return kept
    notes["pixels"] = True
    return candidate


def build_optimised(entry: ModelEntry, providers: Sequence[str], cache_dir: Path, recipe: GraphRecipe = GraphRecipe()) -> Path:
    """Optimise `entry` once and save graph plus aligned external weights; atomic for concurrent builders."""
    target = optimised_path(entry, providers, cache_dir, recipe)
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
        rewrites = recipe.batch or recipe.fp16 or (recipe.pixels and pixel_format(entry) is not None)
        source, notes = _rewritten(entry, providers, recipe) if rewrites else (None, {})
        ort.InferenceSession(source if source is not None else str(entry.path), sess_options=opts, providers=list(providers))
        del source
        (work / (target.name + NOTES_SUFFIX)).write_text(json.dumps(notes))
        target.parent.mkdir(parents=True, exist_ok=True)
        for name in (target.name + NOTES_SUFFIX, target.name + DATA_SUFFIX, target.name):  # the graph last: its presence means complete
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
