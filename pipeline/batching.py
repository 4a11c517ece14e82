"""Micro-batching: concurrent runs of one session merged along the batch axis into one run.

Opt-in (BATCH_WAIT_MS > 0; off by default): on an H100 with the compute-realistic proxies it made a
one-worker pod slower, not faster (1080p, concurrency 32: 39 requests/s merged against 138 unmerged;
the detect stage 151 ms against 11, README GPU), even with the buckets and warm-up below. The cause was
not pinned down in the GPU time we had; one run for all faces of a frame (Fuser._swap_faces), which
needs no wrapper, is what pays on a GPU.

On a GPU one run of a small batch costs little more than a run of one (the detector, recognizer and
swapper each take 1-3 ms, mostly launch overhead and idle SMs), so at concurrency 8 or 32 the GPU
saturates on run count, not on work. `MicroBatcher` wraps a session whose graph has a free batch axis
and stands in for it (kinds call `run`, `get_inputs`, ... as before).

How a call goes: calls whose feeds have the same outputs, per-row shapes and types join one open batch.
The first caller of a batch leads it: it runs at once when no run of this session is in flight (an
idle GPU gains nothing from waiting; concurrency 1 pays no wait), else it waits until the batch holds
`max_size` rows, `wait_ms` has passed, or the session falls idle, whichever comes first. It then closes
the batch, concatenates the feeds, runs once, and hands every caller its own rows. Callers arriving
meanwhile open the next batch, so no caller waits more than the wait plus one run. A call larger than
`max_size` rows runs on its own. When the batched run raises, every caller of the batch gets that
error. `wait_ms` 0 means no wrapper at all (pipeline/loader.py).

Buckets: a run's rows are padded (with copies of its last row) up to the next power of two, or
`max_size`. On CUDA the first run of each new input shape builds cuDNN plans for every convolution and
grows the arena: about 100 ms. Merged batches of any size from 1 to 32 made nearly every run a first
run, and on an H100 the detector's stage took 155 ms at concurrency 32 instead of 6 (35 requests/s, no
better than one at a time). With buckets a model sees at most six shapes (BATCH_MAX 32), and `warm` runs each once,
in the background after the pod turns ready (pipeline/loader.py `ModelBundle.warm_batches`), so the
cold start does not wait for them. An input with a free dimension besides the batch (SCRFD's height and
width) has no one shape to warm from the graph alone, so `warm` also warms the per-row shapes the batcher
has already run (the warm-up's exercise ran the detector at its 640x640 input before the pod turned
ready); before that, such a model's buckets were left for requests to pay. Rows are independent (the batch axis was proven so when the graph was
prepared), so padding never changes a caller's rows; it costs at most the padded rows' compute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batch_axis import probe_feeds


def _random_rows(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """One row of `shape` and `dtype`: 0..255 for images in uint8, [-1, 1] for everything else."""
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 256, (1, *shape)).astype(dtype)
    return rng.uniform(-1.0, 1.0, (1, *shape)).astype(dtype)


def _same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape[1:] == b[k].shape[1:] and a[k].dtype == b[k].dtype for k in a)


@dataclass
class _Batch:
    """One open or running batch: its callers' feeds, rows, and the outcome."""

    key: tuple
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    rows: int = 0
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    results: list[list[np.ndarray]] | None = None
    error: BaseException | None = None


def bucket_sizes(max_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to `max_size`, and `max_size` itself: the batch sizes runs are padded to."""
    sizes = [1]
    while sizes[-1] * 2 < max_size:
        sizes.append(sizes[-1] * 2)
    return tuple(sorted({*sizes, max(max_size, 1)}))


class MicroBatcher:
    """A session wrapper that merges concurrent `run` calls (see the module docstring)."""

    def __init__(self, session: Any, wait_ms: float, max_size: int) -> None:
        self.session = session
        self.wait_s = max(wait_ms, 0.0) / 1000.0
        self.max_size = max(max_size, 1)
        self._lock = threading.Condition()
        self._open: dict[tuple, _Batch] = {}
        self._in_flight = 0
        self.runs = 0  # session runs made (a batch counts once): merging shows as runs < calls
        self.calls = 0
        self.buckets = bucket_sizes(self.max_size)
        # per-row shapes and types of the feeds run so far, by name: what `warm` warms besides the graph's own
        self._seen: dict[tuple, dict[str, tuple[tuple[int, ...], np.dtype]]] = {}

    def padded_size(self, rows: int) -> int:
        """The bucket `rows` rows run as: the smallest bucket that holds them."""
        return next((b for b in self.buckets if b >= rows), rows)

    def _padded_run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray], rows: int) -> list:
        """Run `feeds` (`rows` rows) padded to their bucket with copies of the last row; only the real rows return."""
        size = self.padded_size(rows)
        if size != rows:
            feeds = {name: np.concatenate([v, np.repeat(v[-1:], size - rows, axis=0)]) for name, v in feeds.items()}
        outputs = self.session.run(output_names, feeds)
        return outputs if size == rows else [out[:rows] for out in outputs]

    def warm(self) -> list[int]:
        """Run every bucket size once, so no request pays a shape's first run; returns the sizes run.

        The shapes: the graph's own where every dimension but the batch is fixed (probe inputs), and every
        per-row shape already run through this batcher (random inputs of those shapes and types). A graph
        with free dimensions that has not run yet has nothing to warm."""
        inputs = self.session.get_inputs()
        signatures: list[dict[str, np.ndarray]] = []
        if not any(not isinstance(d, int) for arg in inputs for d in arg.shape[1:]):
            signatures.append(probe_feeds(inputs, 1))
        with self._lock:
            seen = list(self._seen.values())
        rng = np.random.default_rng(0)
        for rows in seen:
            feeds = {name: _random_rows(rng, shape, dtype) for name, (shape, dtype) in rows.items()}
            if not any(_same_rows(feeds, known) for known in signatures):
                signatures.append(feeds)
        for feeds in signatures:
            for size in self.buckets:
                self.session.run(None, {name: np.repeat(row, size, axis=0) for name, row in feeds.items()})
        return list(self.buckets) if signatures else []

    def __getattr__(self, name: str) -> Any:  # get_inputs, get_outputs, get_providers, ... of the session
        return getattr(self.session, name)

    @staticmethod
    def _key(output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> tuple | None:
        if not feeds or not all(isinstance(v, np.ndarray) and v.ndim > 0 for v in feeds.values()):
            return None
        if len({len(v) for v in feeds.values()}) != 1:
            return None  # not one batch size across the inputs: nothing safe to merge
        outs = tuple(output_names) if output_names is not None else None
        return outs, tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feeds.items()))

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray], run_options: Any = None) -> list:
        key = self._key(output_names, feeds) if run_options is None else None
        rows = len(next(iter(feeds.values()))) if key is not None else 0
        if key is None or rows > self.max_size:
            return self._direct(output_names, feeds, run_options)
        with self._lock:
            self.calls += 1
            if key[1] not in self._seen:
                self._seen[key[1]] = {name: (v.shape[1:], v.dtype) for name, v in feeds.items()}
            batch = self._open.get(key)
            if batch is not None and batch.rows + rows <= self.max_size:
                index = len(batch.feeds)
                batch.feeds.append(feeds)
                batch.rows += rows
                if batch.rows >= self.max_size:
                    self._close(batch)
                self._lock.notify_all()
                leader = False
            else:
                if batch is not None:  # full for this call: let its leader run now, open the next one
                    self._close(batch)
                    self._lock.notify_all()
                batch = _Batch(key=key, feeds=[feeds], rows=rows)
                self._open[key] = batch
                index, leader = 0, True
            if leader:
                deadline = time.monotonic() + self.wait_s
                while (not batch.closed and self._in_flight > 0 and batch.rows < self.max_size
                       and (left := deadline - time.monotonic()) > 0):
                    self._lock.wait(left)
                self._close(batch)
                self._in_flight += 1
        if leader:
            self._execute(batch, output_names)
        batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.results is not None
        return batch.results[index]

    def _close(self, batch: _Batch) -> None:
        batch.closed = True
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]

    def _direct(self, output_names, feeds, run_options) -> list:
        with self._lock:
            self.calls += 1
            self.runs += 1
            self._in_flight += 1
        try:
            return self.session.run(output_names, feeds, run_options)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()

    def _execute(self, batch: _Batch, output_names: Sequence[str] | None) -> None:
        try:
            if len(batch.feeds) == 1:
                batch.results = [self._padded_run(output_names, batch.feeds[0], batch.rows)]
            else:
                merged = {name: np.concatenate([f[name] for f in batch.feeds]) for name in batch.feeds[0]}
                outputs = self._padded_run(output_names, merged, batch.rows)
                sizes = [len(next(iter(f.values()))) for f in batch.feeds]
                bounds = np.cumsum([0, *sizes])
                for out in outputs:
                    if len(out) != bounds[-1]:
                        raise RuntimeError(f"a batched output has {len(out)} rows for {bounds[-1]} input rows")
                batch.results = [[out[a:b] for out in outputs] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        except BaseException as exc:  # every caller of the batch gets the run's own error
            batch.error = exc
        finally:
            with self._lock:
                self.runs += 1
                self._in_flight -= 1
                self._lock.notify_all()
            batch.done.set()
