"""Per-request stage timings, reported in the face report and as Server-Timing by the function."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# (stage name, wall-clock start ns, wall-clock end ns): how the function turns stages into trace spans
# without the pipeline knowing about tracing
StageHook = Callable[[str, int, int], None]


class StageTimer:
    """Accumulates milliseconds per named stage; a stage entered twice (one per face) adds up, also from
    two threads at once (a new source's stages run beside the target's: pipeline/overlap.py), so a
    request's stages may add up to more than its wall-clock time.

    `on_stage`, when given, is told of every stage as it ends (its wall-clock start and end)."""

    def __init__(self, on_stage: StageHook | None = None) -> None:
        self.ms: dict[str, float] = {}
        self.on_stage = on_stage
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        wall = time.time_ns() if self.on_stage is not None else 0
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - start) * 1000.0)
            if self.on_stage is not None:
                self.on_stage(name, wall, time.time_ns())

    def add(self, name: str, ms: float) -> None:
        with self._lock:
            self.ms[name] = self.ms.get(name, 0.0) + ms

    def rounded(self) -> dict[str, float]:
        with self._lock:
            return {name: round(value, 2) for name, value in self.ms.items()}
