"""CUDA graphs: a model's run replayed as one captured launch instead of one launch per node.

Why: on an H100 the detector's kernels take about 2.2 ms, but its stage in a request took 8.1 ms, and the
difference is CPU time inside ONNX Runtime around the run (README GPU). The CUDA provider can capture a
run as a CUDA graph (`enable_cuda_graph`) and replay it with one launch. Opt-in per role
(`CUDA_GRAPHS`), because it has conditions that only a GPU can check and that this module enforces:

- The graph must have no copies between devices and no control flow: otherwise the runtime refuses the
  session, and the loader creates the ordinary one and reports why (pipeline/loader.py).
- A replay reads and writes the same device buffers as the capture. Each captured input shape has its
  own buffers, bound once (IO binding); a run copies its feeds into them and copies the outputs back.
- The runtime keeps a captured graph in the capturing thread's context, captures in a mode in which any
  other thread's CUDA allocation breaks the capture, and runs every run of such a session on one stream,
  whose scratch memory a replay reuses. So one thread of this wrapper does every run of its session,
  replays and ordinary runs alike, and captures happen in the warm-up, after the models' first runs and
  before the pod takes traffic, one session after the other (`capture`).
- A capture is checked before it serves: its replays must give the outputs of ordinary runs, on the feeds
  it was captured with and on other feeds of the same shape. A capture that fails or differs, or one with
  nothing to capture (the warm-up's exercise off), is thrown away with its session: the role gets an
  ordinary session, and the reason is reported.

Shapes that were not captured (a frame with three faces, a micro-batched run) run on a second, ordinary
session of the same graph, made in the background once every capture of the process has ended
(`make_others`), from the callers' own threads: on the H200 such runs queued on the one thread behind
the replays (the Solvay photograph's 29-face batch with four workers: 0.64x the requests/s). Until that
session exists, and where it cannot be made, they run on the graph session's thread, marked so that
the runtime neither captures nor replays them (`gpu_graph_id` -1). The shapes captured are those of the warm-up's exercise (pipeline/exercise.py):
one frame for the detector, one face for the recognizer, swappers, maskers and enhancers, which is what a
one-face request runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from .batch_axis import relative_error

log = logging.getLogger(__name__)

GRAPH_ID_KEY = "gpu_graph_id"  # the runtime's run option naming the graph of a run; -1: none
# launches of a new graph in the capture: the runtime's first Run of a graph id runs it twice (its arena
# grows), captures and replays; the next ones must be replays that give the ordinary run's outputs
CAPTURE_LAUNCHES = 3
MAX_SHAPES = 4  # the most input shapes captured per session (each holds its own device buffers)
# how far a replay may be from an ordinary run, as a fraction of the output's largest magnitude
# (batch_axis.relative_error, as the batch axis and the pixel input are checked)
TOLERANCE = 1e-3

FeedKey = tuple[tuple[str, tuple[int, ...], str], ...]


def feed_key(feeds: Mapping[str, np.ndarray]) -> FeedKey:
    """What a capture is valid for: every input's name, shape and type."""
    return tuple(sorted((name, tuple(np.shape(value)), np.asarray(value).dtype.str) for name, value in feeds.items()))


def graph_run_options(graph_id: int) -> ort.RunOptions:
    """Run options naming the graph a run captures or replays; -1 for a run that does neither."""
    options = ort.RunOptions()
    options.add_run_config_entry(GRAPH_ID_KEY, str(graph_id))
    return options


def other_feeds(feeds: Mapping[str, np.ndarray], seed: int = 7) -> dict[str, np.ndarray]:
    """Feeds of the same shapes and types with other values everywhere (the warm-up's frame is flat grey,
    so flipping it would change nothing): a replay must read these, not inputs baked in at capture."""
    rng = np.random.default_rng(seed)
    other = {}
    for name, value in feeds.items():
        value = np.asarray(value)
        if value.dtype == np.uint8:
            other[name] = rng.integers(0, 256, value.shape, dtype=np.uint8)
        elif np.issubdtype(value.dtype, np.floating):
            other[name] = (value + rng.uniform(0.05, 0.5, value.shape) * rng.choice([-1, 1], value.shape)).astype(value.dtype)
        else:
            other[name] = value + 1
    return other


@dataclass
class _Graph:
    """One captured shape: its graph id, device buffers and binding."""

    graph_id: int
    inputs: dict[str, ort.OrtValue]
    outputs: dict[str, ort.OrtValue]
    binding: Any  # ort.IOBinding
    options: ort.RunOptions


class GraphedSession:
    """Stands in for an InferenceSession whose runs of captured shapes are CUDA graph replays.

    Kinds call `run`, `get_inputs`, ... as on the session. Until `capture` the wrapper runs ordinarily and
    remembers the first feeds of each shape (at most MAX_SHAPES); `capture` turns those into graphs (and
    `make_others` then has `second` make the session that runs the other shapes), or, when there is
    nothing to capture or the capture fails, swaps in the session `ordinary` makes (one without CUDA
    graphs, warmed with the remembered feeds) and steps aside. `device` is `cuda` in service; `cpu` runs
    the same binding and hand-over on the CPU provider, which is how the tests check them without a GPU. `sync_inputs`: also wait for the whole device after copying the feeds in (off: see
    `_launch`).
    """

    def __init__(self, session: ort.InferenceSession, *, ordinary: Callable[[], ort.InferenceSession],
                 second: Callable[[], ort.InferenceSession] | None = None,
                 device: str = "cuda", device_id: int = 0, sync_inputs: bool = False) -> None:
        self.session = session
        self.device = device
        self.device_id = device_id
        self.sync_inputs = sync_inputs
        self.state = "off: not captured yet (the warm-up captures)"
        self.replays = 0  # runs served by a graph (counted on the graph thread)
        self._make_ordinary = ordinary
        # the second session's maker: the loader's never rebuilds the graph file on a failure (the device
        # out of memory while the pod serves is no damaged file)
        self._make_second = second or ordinary
        self._captured_feeds: list[dict[str, np.ndarray]] = []  # warm the second session with these
        self._others: ort.InferenceSession | None = None  # runs the shapes not captured, from any thread
        self.others_ready = threading.Event()  # set once `_others` is made, or could not be
        self._recording = True
        self._seen: dict[FeedKey, dict[str, np.ndarray]] = {}
        self._graphs: dict[FeedKey, _Graph] = {}
        self._no_graph = graph_run_options(-1)
        self._output_names = [o.name for o in session.get_outputs()]
        self._lock = threading.Lock()
        # the one thread that makes every run of the session: graphs live in its context, and all runs of
        # such a session share one stream and the scratch memory a replay reuses
        self._thread: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cuda-graph")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("run"):  # run_with_iobinding, ... would run without the graph id, capturing graph 0
            raise AttributeError(f"a session with CUDA graphs runs through run(), not {name}")
        return getattr(self.session, name)

    @property
    def others_made(self) -> bool:
        """Whether the second, ordinary session runs the shapes not captured (`make_others`)."""
        return self._others is not None

    @property
    def captured(self) -> int:
        """How many input shapes replay as graphs."""
        return len(self._graphs)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray],
            run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        """The outputs, from a replay where `feeds` have a captured shape (the caller's `run_options` are
        not used there), else from an ordinary run marked to neither capture nor replay (the caller's
        `run_options` get that mark)."""
        thread = self._thread
        if thread is None:  # stepped aside: an ordinary session, run from any thread
            return self.session.run(output_names, feeds, run_options)
        graph = self._graphs.get(feed_key(feeds)) if self._graphs else None
        if graph is not None:
            return thread.submit(self._replay, graph, output_names, feeds).result()
        others = self._others
        if others is not None:  # a shape not captured, beside the replays rather than queued behind them
            return others.run(output_names, feeds, run_options)
        if self._recording:
            with self._lock:
                if self._recording and len(self._seen) < MAX_SHAPES:
                    self._seen.setdefault(feed_key(feeds), {k: np.array(v, copy=True) for k, v in feeds.items()})
        if run_options is not None:
            run_options.add_run_config_entry(GRAPH_ID_KEY, "-1")
        return thread.submit(self.session.run, output_names, feeds, run_options or self._no_graph).result()

    def capture(self) -> str:
        """Capture a graph for each shape run so far, on this wrapper's thread; returns the state
        (`on (n shapes)` or `off: why`). Call it once, while no other thread uses CUDA (the warm-up)."""
        with self._lock:
            if not self._recording:
                return self.state
            self._recording = False
            seen, self._seen = self._seen, {}
        assert self._thread is not None
        if not seen:
            self._step_aside("off: no run to capture (the warm-up's exercise is off)", seen)
            return self.state
        try:
            self._graphs = self._thread.submit(self._capture_all, seen).result()
            self._captured_feeds = list(seen.values())
        except Exception as exc:  # the runtime raises its own types (Fail, RuntimeException, ...)
            log.warning("CUDA graph capture failed, ordinary runs: %s", exc)
            self._step_aside(f"off: capture failed ({type(exc).__name__}: {str(exc)[:200]})", seen)
            return self.state
        self.state = f"on ({len(self._graphs)} shape{'s' if len(self._graphs) > 1 else ''})"
        return self.state

    def make_others(self) -> None:
        """Make the ordinary session for the shapes not captured, once no capture of any session can still
        be running (its allocations would break one: ModelBundle.capture_graphs calls it after all of them,
        in the background). Until it is there, and if it cannot be made (the device out of memory, say),
        those shapes run on the graph session's thread. Sets `others_ready` either way."""
        try:
            with self._lock:  # one maker at a time; a second call finds the session made
                if self._thread is not None and self._graphs and self._others is None:
                    session = self._make_second()
                    for feeds in self._captured_feeds:  # its first runs (allocations, handles) before requests'
                        session.run(None, feeds)
                    self._others = session
                    log.info("CUDA graphs: a second session runs the shapes not captured")
        except Exception as exc:  # the runtime raises its own types
            log.warning("CUDA graphs: no second session for the shapes not captured, which run on the graph "
                        "session's thread: %s", exc)
        finally:
            self.others_ready.set()

    def _step_aside(self, state: str, seen: Mapping[FeedKey, Mapping[str, np.ndarray]]) -> None:
        """Replace the graph session (a failed capture may leave its stream and graphs in any state) with an
        ordinary one, warmed with the shapes seen so no request pays its first runs, and run it from the
        callers' threads as any session is."""
        self.state = state
        self._graphs = {}
        try:
            session = self._make_ordinary()
            for feeds in seen.values():
                session.run(None, feeds)
        except Exception as exc:
            raise RuntimeError(f"CUDA graphs are {state}, and the ordinary session that was to replace the graph "
                               f"session failed: {type(exc).__name__}: {exc}") from exc
        self.session = session
        self.others_ready.set()  # no second session: the ordinary one serves every shape
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)

    def _capture_all(self, seen: dict[FeedKey, dict[str, np.ndarray]]) -> dict[FeedKey, _Graph]:
        graphs: dict[FeedKey, _Graph] = {}
        for number, (key, feeds) in enumerate(seen.items(), start=1):
            expected = self.session.run(self._output_names, feeds, self._no_graph)
            graph = self._bind(number, feeds, expected)
            for _ in range(CAPTURE_LAUNCHES):
                self._launch(graph, feeds)
            self._check(graph, expected, "the feeds it was captured with")
            other = other_feeds(feeds)
            if feed_key(other) != key or any(np.array_equal(other[k], feeds[k]) for k in feeds):
                raise RuntimeError("no other feeds of the captured shape to check the replay with")
            self._launch(graph, other)
            self._check(graph, self.session.run(self._output_names, other, self._no_graph), "other feeds")
            graphs[key] = graph
        return graphs

    def _check(self, graph: _Graph, expected: Sequence[np.ndarray], which: str) -> None:
        replayed = self._outputs(graph, self._output_names)
        worst = max(relative_error(r, e) for r, e in zip(replayed, expected, strict=True))
        if worst > TOLERANCE:
            raise RuntimeError(f"a replay on {which} differs from an ordinary run by {worst:.3g}")

    def _bind(self, graph_id: int, feeds: Mapping[str, np.ndarray], outputs: Sequence[np.ndarray]) -> _Graph:
        inputs = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device, self.device_id)
                  for name, value in feeds.items()}
        bound = {name: ort.OrtValue.ortvalue_from_shape_and_type(out.shape, out.dtype, self.device, self.device_id)
                 for name, out in zip(self._output_names, outputs, strict=True)}
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in bound.items():
            binding.bind_ortvalue_output(name, value)
        return _Graph(graph_id, inputs, bound, binding, graph_run_options(graph_id))

    def _launch(self, graph: _Graph, feeds: Mapping[str, np.ndarray]) -> None:
        for name, value in graph.inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))
        if self.sync_inputs:
            # Off by default. `update_inplace` copies with cudaMemcpy and then synchronises the default stream
            # (onnxruntime since 1.10, PR 9841: its sessions' streams do not wait for the default stream), so
            # the feeds have landed when it returns. This wait was kept for runtimes without that: it waits for
            # the whole device, every other run of the process included, while holding the GIL (the binding
            # does not release it). On the H200, with it, a graph role under load slowed the whole process
            # (one worker 0.88x at concurrency 8 and 32; many-face frames' paste stage 4x longer). The run
            # synchronises its stream before it returns, so the outputs need no wait either.
            graph.binding.synchronize_inputs()
        self.session.run_with_iobinding(graph.binding, graph.options)

    def _outputs(self, graph: _Graph, output_names: Sequence[str] | None) -> list[np.ndarray]:
        """Host copies of the bound outputs (a CUDA value's `numpy` copies; a CPU value's is a view of the
        buffer that the next replay overwrites)."""
        names = output_names or self._output_names
        if self.device == "cpu":
            return [graph.outputs[name].numpy().copy() for name in names]
        return [graph.outputs[name].numpy() for name in names]

    def _replay(self, graph: _Graph, output_names: Sequence[str] | None,
                feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self._launch(graph, feeds)
        self.replays += 1
        return self._outputs(graph, output_names)
