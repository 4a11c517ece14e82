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
  it was captured with and on other feeds of the same shape. A capture that fails or differs is thrown
  away with its session: the role gets an ordinary session, and the reason is reported.

Shapes that were not captured (a frame with three faces, a micro-batched run) run as before, marked so
that the runtime neither captures nor replays them (`gpu_graph_id` -1). The shapes captured are those of
the warm-up's exercise (pipeline/exercise.py): one frame for the detector, one face for the recognizer,
swappers, maskers and enhancers, which is what a one-face request runs.
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

log = logging.getLogger(__name__)

GRAPH_ID_KEY = "gpu_graph_id"  # the runtime's run option naming the graph of a run; -1: none
# launches of a new graph in the capture: the runtime's first Run of a graph id runs it twice (its arena
# grows), captures and replays; the next ones must be replays that give the ordinary run's outputs
CAPTURE_LAUNCHES = 3
MAX_SHAPES = 4  # the most input shapes captured per session (each holds its own device buffers)
TOLERANCE = 1e-3  # a replay may differ from an ordinary run by this much, relative to the output's scale

FeedKey = tuple[tuple[str, tuple[int, ...], str], ...]


def feed_key(feeds: Mapping[str, np.ndarray]) -> FeedKey:
    """What a capture is valid for: every input's name, shape and type."""
    return tuple(sorted((name, tuple(np.shape(value)), np.asarray(value).dtype.str) for name, value in feeds.items()))


def run_options(graph_id: int) -> ort.RunOptions:
    options = ort.RunOptions()
    options.add_run_config_entry(GRAPH_ID_KEY, str(graph_id))
    return options


def graph_provider_options(provider_options: Sequence[dict], providers: Sequence[str]) -> list[dict]:
    """`provider_options` with CUDA graphs enabled on the CUDA provider."""
    return [{**opts, "enable_cuda_graph": "1"} if name == "CUDAExecutionProvider" else dict(opts)
            for name, opts in zip(providers, provider_options, strict=True)]


def _max_difference(replayed: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference relative to the output's scale (at least 1)."""
    if replayed.shape != expected.shape:
        return float("inf")
    if replayed.size == 0:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(expected.astype(np.float64)))))
    return float(np.max(np.abs(replayed.astype(np.float64) - expected.astype(np.float64)))) / scale


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
    remembers the first feeds of each shape (at most MAX_SHAPES); `capture` turns those into graphs, or,
    when that fails, swaps in the session `ordinary` makes (one without CUDA graphs). `device` is `cuda`
    in service; `cpu` runs the same binding and hand-over on the CPU provider, which is how the tests
    check them without a GPU.
    """

    def __init__(self, session: ort.InferenceSession, device: str = "cuda", device_id: int = 0,
                 ordinary: Callable[[], ort.InferenceSession] | None = None) -> None:
        self.session = session
        self._make_ordinary = ordinary
        self.device = device
        self.device_id = device_id
        self.state = "off: not captured yet (the warm-up captures)"
        self._seen: dict[FeedKey, dict[str, np.ndarray]] = {}
        self._graphs: dict[FeedKey, _Graph] = {}
        self._ordinary = run_options(-1)
        self._output_names = [o.name for o in session.get_outputs()]
        self._lock = threading.Lock()
        self.replays = 0  # runs served by a graph (counted on the graph thread)
        # the one thread that captures and replays this session's graphs (they live in its context)
        self._thread: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cuda-graph")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("run"):  # run_with_iobinding, ... would run without the graph id, capturing graph 0
            raise AttributeError(f"a session with CUDA graphs runs through run(), not {name}")
        return getattr(self.session, name)

    @property
    def captured(self) -> int:
        """How many input shapes replay as graphs."""
        return len(self._graphs)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray],
            run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        if self._thread is None:  # the capture failed: an ordinary session, run from any thread
            return self.session.run(output_names, feeds, run_options)
        graph = self._graphs.get(feed_key(feeds)) if self._graphs else None
        if graph is not None:
            return self._thread.submit(self._replay, graph, output_names, feeds).result()
        if not self._graphs and len(self._seen) < MAX_SHAPES:
            with self._lock:
                self._seen.setdefault(feed_key(feeds), {k: np.array(v, copy=True) for k, v in feeds.items()})
        if run_options is not None:  # the caller's options, marked: without an id the runtime would capture here
            run_options.add_run_config_entry(GRAPH_ID_KEY, "-1")
        return self._thread.submit(self.session.run, output_names, feeds, run_options or self._ordinary).result()

    def capture(self) -> str:
        """Capture a graph for each shape run so far, on this wrapper's thread; returns the state
        (`on (n shapes)` or `off: why`). Call it while no other thread uses CUDA (the warm-up)."""
        with self._lock:
            seen, self._seen = self._seen, {}
        if self._thread is None or self._graphs:  # captured, or given up, already
            return self.state
        if not seen:
            self.state = "off: no run to capture (the warm-up's exercise is off)"
            return self.state
        try:
            self._graphs = self._thread.submit(self._capture_all, seen).result()
        except Exception as exc:  # the runtime raises its own types (Fail, RuntimeException, ...)
            log.warning("CUDA graph capture failed, ordinary runs: %s", exc)
            self.state = f"off: capture failed ({type(exc).__name__}: {str(exc)[:200]})"
            self._give_up()
            return self.state
        self.state = f"on ({len(self._graphs)} shape{'s' if len(self._graphs) > 1 else ''})"
        return self.state

    def _give_up(self) -> None:
        """Throw the graph session away (a failed capture may leave its stream and graphs in any state) for
        an ordinary one, run from the callers' threads as any session is."""
        self._graphs = {}
        if self._make_ordinary is not None:
            self.session = self._make_ordinary()
        thread, self._thread = self._thread, None
        thread.shutdown(wait=False)

    def _capture_all(self, seen: dict[FeedKey, dict[str, np.ndarray]]) -> dict[FeedKey, _Graph]:
        graphs: dict[FeedKey, _Graph] = {}
        for number, (key, feeds) in enumerate(seen.items(), start=1):
            expected = self.session.run(self._output_names, feeds, self._ordinary)
            graph = self._bind(number, feeds, expected)
            for _ in range(CAPTURE_LAUNCHES):
                self._launch(graph, feeds)
            self._check(graph, expected, "the feeds it was captured with")
            # other feeds of the same shape: a replay must read the new inputs, not ones baked in at capture
            other = {name: np.ascontiguousarray(np.flip(value, axis=-1)) for name, value in feeds.items()}
            self._launch(graph, other)
            self._check(graph, self.session.run(self._output_names, other, self._ordinary), "other feeds")
            graphs[key] = graph
        return graphs

    def _check(self, graph: _Graph, expected: Sequence[np.ndarray], which: str) -> None:
        replayed = self._outputs(graph, self._output_names)
        worst = max(_max_difference(r, e) for r, e in zip(replayed, expected, strict=True))
        if worst > TOLERANCE:
            raise RuntimeError(f"a replay on {which} differs from an ordinary run by {worst:.3g} of the output's scale")

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
        return _Graph(graph_id, inputs, bound, binding, run_options(graph_id))

    def _launch(self, graph: _Graph, feeds: Mapping[str, np.ndarray]) -> None:
        for name, value in graph.inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))
        # runtimes whose copy from pageable memory returns before it lands (no sync after the cudaMemcpy) would
        # let the replay, on the runtime's own stream, read old inputs: wait for the device first. The run
        # itself synchronises its stream before it returns, so the outputs need no such wait.
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
