"""Micro-batching: concurrent runs of one session merged along the batch axis into one run.

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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
                batch.results = [self.session.run(output_names, batch.feeds[0])]
            else:
                merged = {name: np.concatenate([f[name] for f in batch.feeds]) for name in batch.feeds[0]}
                outputs = self.session.run(output_names, merged)
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
