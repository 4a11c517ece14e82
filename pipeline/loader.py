"""Building a process's models from a model set: verify, prepare artefacts, create sessions.

The loader walks the manifest's roles and asks each role's kind (`pipeline.models.KINDS`) to prepare
its artefacts and to wrap its session, so it never names a kind itself. Sessions are created in the serving
process (never before a fork: CUDA is not fork-safe), in parallel: the runtime releases the GIL while it loads, and
on GPUs each creation initialises kernels.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from .artefacts import build_optimised, fast_load_options, optimised_path
from .config import Settings
from .errors import ModelSetInvalid
from .fuser import Fuser
from .manifest import ModelEntry, ModelSet
from .model_store import open_model_set
from .models import ModelKind, kind_class
from .sessions import check_providers, create_session, is_auto, provider_options, resolve_providers

log = logging.getLogger(__name__)


@dataclass
class ModelBundle:
    """The loaded models of one set, by role, with what loading did (for the log)."""

    model_set: ModelSet
    providers: list[str]
    models: dict[str, ModelKind]
    load_log: list[str] = field(default_factory=list)
    active: dict[str, list[str]] = field(default_factory=dict)  # role -> providers its session runs on

    @property
    def version(self) -> str:
        return self.model_set.version

    def role(self, name: str) -> ModelKind | None:
        return self.models.get(name)


def _kind(entry: ModelEntry) -> type[ModelKind]:
    cls = kind_class(entry.kind)
    if cls is None:  # parse_manifest refuses these; kept for sets built in code
        raise ModelSetInvalid(f"{entry.path.name} ({entry.role}) has kind {entry.kind!r}, which this version does not handle")
    return cls


def _artefacts(model_set: ModelSet, settings: Settings, providers: list[str], cache_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Each kind's own artefacts and an optimised graph per role, building what is missing one at a
    time (building holds a whole model in memory). A role whose graph cannot be built is absent from
    the map and loads from the original model: a read-only or full cache must not stop serving."""
    built: list[str] = []
    graphs: dict[str, Path] = {}
    for role, entry in model_set.models.items():
        built += _kind(entry).prepare(entry, cache_dir)
        if not settings.optimised_graphs:
            continue
        path = optimised_path(entry, providers, cache_dir, settings.gpu.name)
        if not path.is_file():
            try:
                build_optimised(entry, providers, cache_dir, settings.gpu.name)
            except Exception as exc:  # the runtime and the filesystem raise many types here
                log.warning("cannot build an optimised graph for %s: %s", entry.path.name, exc)
                continue
            built.append(f"optimised graph for {entry.path.name}")
        graphs[role] = path
    return graphs, built


def prepare(settings: Settings) -> list[str]:
    """Build every derived artefact that is missing (what `python -m warmup prepare` runs)."""
    cache_dir = settings.resolved_cache_path()
    model_set = open_model_set(settings.model_dir, cache_dir)
    return _artefacts(model_set, settings, resolve_providers(settings.execution_providers), cache_dir)[1]


def _session(entry: ModelEntry, graph: Path | None, providers: list[str], cache_dir: Path, options: list[dict],
             load_log: list[str], gpu: str) -> ort.InferenceSession:
    if graph is None:
        return create_session(entry.path, providers, provider_options=options)
    try:
        return create_session(graph, providers, options=fast_load_options(), provider_options=options)
    except ModelSetInvalid:
        # a damaged artefact (a cache volume filled up mid-write, say): rebuild it once from the model
        log.warning("the optimised graph %s cannot be loaded; rebuilding it", graph)
        shutil.rmtree(graph.parent, ignore_errors=True)
        build_optimised(entry, providers, cache_dir, gpu)
        load_log.append(f"rebuilt a damaged optimised graph for {entry.path.name}")
        return create_session(graph, providers, options=fast_load_options(), provider_options=options)


def load_models(settings: Settings) -> ModelBundle:
    """Verify the model set of `settings`, prepare what is missing, and create every role's model."""
    cache_dir = settings.resolved_cache_path()
    model_set = open_model_set(settings.model_dir, cache_dir)
    providers = resolve_providers(settings.execution_providers)
    graphs, built = _artefacts(model_set, settings, providers, cache_dir)
    load_log = [f"built {', '.join(built)} (run `python -m warmup prepare` to do this ahead)"] if built else []
    options = provider_options(providers, cache_dir, settings.gpu)
    with ThreadPoolExecutor(max_workers=len(model_set.models), thread_name_prefix="session") as pool:
        futures = {role: pool.submit(_session, entry, graphs.get(role), providers, cache_dir, options, load_log,
                                     settings.gpu.name)
                   for role, entry in model_set.models.items()}
        sessions = {role: future.result() for role, future in futures.items()}
    auto = is_auto(settings.execution_providers)
    active = {role: check_providers(role, entry.path.name, sessions[role], providers, auto)
              for role, entry in model_set.models.items()}
    models = {role: _kind(entry).create(sessions[role], entry, cache_dir) for role, entry in model_set.models.items()}
    log.info("model set %s (%s) loaded: %s", model_set.name, model_set.version,
             ", ".join(f"{role} on {names[0]}" for role, names in active.items()))
    return ModelBundle(model_set=model_set, providers=providers, models=models, load_log=load_log, active=active)


def load_fuser(settings: Settings) -> Fuser:
    """A Fuser over the models of `settings`, with its image limits."""
    return Fuser(load_models(settings), settings.limits)
