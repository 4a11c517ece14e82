"""Building a process's models from a model set: verify, prepare artefacts, create sessions.

The loader walks the manifest's roles and asks each role's kind (`pipeline.models.KINDS`) to prepare
its artefacts and to wrap its session, so it never names a kind itself. Sessions are created in the serving
process (never before a fork: CUDA is not fork-safe), in parallel: the runtime releases the GIL while it loads, and
on GPUs each creation initialises kernels. A session whose graph has a free batch axis is wrapped in a
`MicroBatcher` when BATCH_WAIT_MS is above 0.
"""

from __future__ import annotations

import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from . import gpu_jpeg
from .artefacts import GraphRecipe, build_optimised, fast_load_options, optimised_path
from .batch_axis import has_free_batch
from .batching import MicroBatcher
from .config import ConfigError, Settings
from .errors import ModelSetInvalid
from .fuser import Fuser
from .gpu_info import gpu_model
from .manifest import ModelEntry, ModelSet
from .model_store import open_model_set
from .models import ModelKind, kind_class
from .precision import fp16_wanted
from .sessions import check_providers, create_session, is_auto, provider_options, resolve_providers

if TYPE_CHECKING:  # imported only where CUDA_GRAPHS names a role: nothing added to every start
    from .cuda_graph import GraphedSession

log = logging.getLogger(__name__)
GRAPH_DEVICE = "cuda"  # where a CUDA graph's bound buffers live (the tests wire the loader with "cpu")
OTHERS_WAIT_S = 120.0  # how long the batch warm-up waits for CUDA graphs' second sessions before warming anyway


@dataclass
class ModelBundle:
    """The loaded models of one set, by role, with what loading did (for the log)."""

    model_set: ModelSet
    providers: list[str]
    models: dict[str, ModelKind]
    load_log: list[str] = field(default_factory=list)
    active: dict[str, list[str]] = field(default_factory=dict)  # role -> providers its session runs on
    batch_max: int = 32  # BATCH_MAX: the most rows (faces, tiles) of one run
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)  # role -> its micro-batched session
    # the models' first runs side by side (pipeline/exercise.py), except where CUDA_CONV_ALGO_SEARCH is
    # EXHAUSTIVE: concurrent cuDNN benchmarks would time each other and keep the algorithms that won
    first_runs_together: bool = True
    graphed: dict[str, GraphedSession] = field(default_factory=dict)  # role -> its CUDA graph session
    graphs_refused: dict[str, str] = field(default_factory=dict)  # role CUDA_GRAPHS names -> why it has none

    @property
    def cuda_graphs(self) -> dict[str, str]:
        """The CUDA graph state of every role CUDA_GRAPHS names: its session's, or why it has none."""
        return {**self.graphs_refused, **{role: session.state for role, session in self.graphed.items()}}

    def capture_graphs(self) -> None:
        """Capture the CUDA graphs of the roles that may have them, one session after the other (a capture
        must not meet another thread's CUDA work). The warm-up calls it after the models' first runs,
        whose shapes are the ones captured."""
        for role, session in self.graphed.items():
            log.info("CUDA graph of %s: %s", role, session.capture())
        # then, in the background (the pod may turn ready meanwhile), each captured role's second session,
        # for the shapes it does not replay (GraphedSession.make_others): no capture is left to disturb
        captured = [session for session in self.graphed.values() if session.captured]
        if captured:
            threading.Thread(target=lambda: [session.make_others() for session in captured],
                             name="cuda-graph-others", daemon=True).start()

    def warm_batches(self) -> dict[str, list[int]]:
        """Run each micro-batched model once at every bucket size (MicroBatcher.warm), by role: what
        the warm-up hook does in the background once the pod is ready. With CUDA graphs, after the second
        sessions are made (bounded wait): they, not the graph sessions, run the batched shapes."""
        for session in self.graphed.values():
            session.others_ready.wait(OTHERS_WAIT_S)
        return {role: batcher.warm() for role, batcher in self.batchers.items()}

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


def graph_recipe(settings: Settings, providers: list[str]) -> GraphRecipe:
    """What the optimised graphs are built to: for which GPU model (NVIDIA_GPU_NAME, else the device's
    model and compute capability where a GPU provider comes first), a batch axis unless BATCH_MAX is 1,
    fp16 per MODEL_FP16, and a uint8 image input for kinds that declare their pixel normalisation."""
    on_gpu = bool(providers) and providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    gpu = settings.gpu.name or (gpu_model(settings.gpu.device_id) if on_gpu else "")
    return GraphRecipe(gpu=gpu, batch=settings.batching.max_size > 1,
                       fp16=fp16_wanted(settings.model_fp16, providers, settings.gpu.device_id))


def role_recipes(model_set: ModelSet, settings: Settings, providers: list[str]) -> dict[str, GraphRecipe]:
    """What each role's optimised graph is built to (`graph_recipe`, then `role_recipe`), once per load."""
    recipe = graph_recipe(settings, providers)
    return {role: role_recipe(recipe, entry, settings) for role, entry in model_set.models.items()}


def role_recipe(recipe: GraphRecipe, entry: ModelEntry, settings: Settings) -> GraphRecipe:
    """`recipe` as one role's graph is built to: a batch axis only where the kind's runs can hold more than
    one row (models/base.py's `rows_per_request`, or merging across requests on), fp16 under `auto` only
    for kinds where it pays (`fp16_pays`)."""
    cls = _kind(entry)
    batch = recipe.batch and (cls.rows_per_request or settings.batching.wait > 0)
    fp16 = recipe.fp16 and (cls.fp16_pays or settings.model_fp16 == "on")
    return replace(recipe, batch=batch, fp16=fp16)


def _artefacts(model_set: ModelSet, settings: Settings, providers: list[str], cache_dir: Path,
               recipes: dict[str, GraphRecipe]) -> tuple[dict[str, Path], list[str]]:
    """Each kind's own artefacts and an optimised graph per role, building what is missing one at a
    time (building holds a whole model in memory). A role whose graph cannot be built is absent from
    the map and loads from the original model: a read-only or full cache must not stop serving."""
    built: list[str] = []
    graphs: dict[str, Path] = {}
    for role, entry in model_set.models.items():
        built += _kind(entry).prepare(entry, cache_dir)
        if not settings.optimised_graphs:
            continue
        path = optimised_path(entry, providers, cache_dir, recipes[role])
        if not path.is_file():
            try:
                build_optimised(entry, providers, cache_dir, recipes[role])
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
    providers = resolve_providers(settings.execution_providers)
    return _artefacts(model_set, settings, providers, cache_dir, role_recipes(model_set, settings, providers))[1]


@dataclass(frozen=True)
class _RoleLoad:
    """What creating one role's session takes: its model, optimised graph (None: load the model itself) and
    recipe, and the load's providers, cache folder, log and CPU_THREADS (each session's intra-op pool)."""

    entry: ModelEntry
    graph: Path | None
    recipe: GraphRecipe
    providers: list[str]
    cache_dir: Path
    load_log: list[str]
    threads: int

    def session(self, options: list[dict], may_refuse: bool = False) -> ort.InferenceSession:
        """The role's session with provider `options`, from its optimised graph (rebuilt once if it is
        damaged), else from the model. `may_refuse`: options the runtime may refuse (CUDA graphs), a refusal
        the caller handles; it is then neither logged as a load error nor taken for a damaged file."""
        entry, graph, providers = self.entry, self.graph, self.providers
        if graph is None:
            return create_session(entry.path, providers, provider_options=options, log_failure=not may_refuse,
                                  threads=self.threads)
        try:
            return create_session(graph, providers, options=fast_load_options(), provider_options=options,
                                  log_failure=not may_refuse, threads=self.threads)
        except ModelSetInvalid:
            if may_refuse:
                raise
            # a damaged artefact (a cache volume filled up mid-write, say): rebuild it once from the model
            log.warning("the optimised graph %s cannot be loaded; rebuilding it", graph)
            shutil.rmtree(graph.parent, ignore_errors=True)
            build_optimised(entry, providers, self.cache_dir, self.recipe)
            self.load_log.append(f"rebuilt a damaged optimised graph for {entry.path.name}")
            return create_session(graph, providers, options=fast_load_options(), provider_options=options,
                                  threads=self.threads)


def _graph_roles_of(settings: Settings, model_set: ModelSet) -> list[str]:
    """The roles CUDA_GRAPHS names, checked against the set: a name the set lacks is a configuration error."""
    wanted = settings.gpu.cuda_graphs
    if wanted == ("all",):
        return list(model_set.models)
    unknown = [role for role in wanted if role not in model_set.models]
    if unknown:
        raise ConfigError(f"CUDA_GRAPHS names {', '.join(unknown)}, which model set {model_set.name} has no role of "
                          f"(its roles: {', '.join(model_set.models)}; or use all, or off)")
    return list(wanted)


def _role_session(load: _RoleLoad, options: list[dict],
                  graph_options: list[dict] | None) -> tuple[ort.InferenceSession, str | None]:
    """A role's session and, for a role CUDA_GRAPHS names (`graph_options`: the provider options with
    them), why it has none (None: created with them).

    Such a role's session is first created with CUDA graphs enabled; where the runtime refuses (copies
    between devices, control flow, no CUDA provider; a damaged file too, which the ordinary session then
    rebuilds, so its graphs wait for the next start) the role gets the ordinary session."""
    if graph_options is None:
        return load.session(options), None
    if "CUDAExecutionProvider" not in load.providers:
        why = f"off: CUDA graphs are made by the CUDA provider, and EXECUTION_PROVIDERS gives {', '.join(load.providers)}"
    else:
        try:
            return load.session(graph_options, may_refuse=True), None
        except ModelSetInvalid as exc:
            why = f"off: the runtime refused ({str(exc.__cause__ or exc).strip().splitlines()[-1][:200]})"
            log.warning("CUDA graphs %s for %s; an ordinary session instead", why, load.entry.role)
    return load.session(options), why


def _batched(session: ort.InferenceSession, settings: Settings) -> ort.InferenceSession | MicroBatcher:
    """`session` behind a MicroBatcher when its graph has a free batch axis and the wait is above 0."""
    wait = settings.batching.wait
    if wait <= 0 or not has_free_batch(session):
        return session
    return MicroBatcher(session, wait, settings.batching.max_size)


def load_models(settings: Settings) -> ModelBundle:
    """Verify the model set of `settings`, prepare what is missing, and create every role's model."""
    cache_dir = settings.resolved_cache_path()
    model_set = open_model_set(settings.model_dir, cache_dir)
    providers = resolve_providers(settings.execution_providers)
    recipes = role_recipes(model_set, settings, providers)
    graph_roles = _graph_roles_of(settings, model_set)  # a misnamed role fails before anything is built
    graphs, built = _artefacts(model_set, settings, providers, cache_dir, recipes)
    load_log = [f"built {', '.join(built)} (run `python -m warmup prepare` to do this ahead)"] if built else []
    options = provider_options(providers, cache_dir, settings.gpu)
    graph_options = provider_options(providers, cache_dir, settings.gpu, cuda_graph=True) if graph_roles else None
    loads = {role: _RoleLoad(entry, graphs.get(role), recipes[role], providers, cache_dir, load_log, settings.cpu_threads)
             for role, entry in model_set.models.items()}
    with ThreadPoolExecutor(max_workers=len(model_set.models), thread_name_prefix="session") as pool:
        futures = {role: pool.submit(_role_session, loads[role], options, graph_options if role in graph_roles else None)
                   for role in model_set.models}
        made = {role: future.result() for role, future in futures.items()}
    sessions = {role: session for role, (session, _) in made.items()}
    auto = is_auto(settings.execution_providers)
    active = {role: check_providers(role, entry.path.name, sessions[role], providers, auto)
              for role, entry in model_set.models.items()}
    if graph_roles:
        from .cuda_graph import GraphedSession
    ordinary = {role: partial(loads[role].session, options) for role in graph_roles}
    graphed = {role: GraphedSession(sessions[role], device=GRAPH_DEVICE, device_id=settings.gpu.device_id,
                                    ordinary=ordinary[role], second=partial(ordinary[role], may_refuse=True))
               for role in graph_roles if made[role][1] is None}
    refused = {role: why for role, (_, why) in made.items() if why is not None}
    sessions = {role: _batched(graphed.get(role, session), settings) for role, session in sessions.items()}
    models = {role: _kind(entry).create(sessions[role], entry, cache_dir) for role, entry in model_set.models.items()}
    log.info("model set %s (%s) loaded: %s", model_set.name, model_set.version,
             ", ".join(f"{role} on {names[0]}" for role, names in active.items()))
    return ModelBundle(model_set=model_set, providers=providers, models=models, load_log=load_log, active=active,
                       batch_max=settings.batching.max_size,
                       first_runs_together=settings.gpu.conv_algo_search != "EXHAUSTIVE",
                       graphed=graphed, graphs_refused=refused,
                       batchers={role: s for role, s in sessions.items() if isinstance(s, MicroBatcher)})


def _size_cpu_pools(settings: Settings) -> None:
    """OpenCV's thread pool to CPU_THREADS (when set; process-wide); the sessions' pools get it at
    creation (load_models). N worker processes that each sized their pools to the whole machine would run
    N times as many pool threads as there are CPUs (WORKERS, function/serve.py, gives each its share)."""
    if settings.cpu_threads > 0:
        import cv2

        cv2.setNumThreads(settings.cpu_threads)


def load_fuser(settings: Settings) -> Fuser:
    """A Fuser over the models of `settings`, with its image limits and JPEG codec.

    A GPU codec (IMAGE_CODEC=nvimgcodec) is opened on a thread of its own while the models load: on the
    H200, opening it one after the other made four workers take 6.8 s to turn ready against 3.4 s. Without
    nvImageCodec installed the load fails at once; a codec that cannot open fails it once the models have
    loaded (unless that failed first): readiness is refused (GpuJpegUnavailable), never falling back to
    OpenCV."""
    _size_cpu_pools(settings)
    if settings.image_codec == "opencv":
        return Fuser(load_models(settings), settings.limits, None)
    gpu_jpeg.import_nvimgcodec()  # a missing library fails here, at once, before any model is loaded
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-codec") as pool:
        codec = pool.submit(gpu_jpeg.open_gpu_jpeg, settings.gpu.device_id)
        models = load_models(settings)
        return Fuser(models, settings.limits, codec.result())
