"""The plumbing of the bounded frame pipeline: channels between threads, and threads that stop together.

decode (thread) -> fuse (caller's thread) -> encode (thread), joined by `Channel`s of a few items
each, so at most a fixed number of frames are alive whatever the clip's length: a slow stage blocks
the one before it instead of letting frames pile up. A failure in any stage sets the shared stop
event; every blocked put or get notices within a tenth of a second, so no thread is left waiting on
a queue nobody serves, and the first failure is the one raised.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_POLL_S = 0.1


class Stopped(Exception):
    """The pipeline is stopping (another stage failed); the stage gives up quietly."""


class Pipeline:
    """A stop event, the first failure, and the threads started under it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = exc
        self.stop.set()

    def start(self, name: str, work: Callable[[], None]) -> None:
        """Run `work` in a daemon thread; its exception (other than Stopped) fails the pipeline."""

        def run() -> None:
            try:
                work()
            except Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
                self.fail(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        """Wait for every thread; raise the first failure, if any."""
        for thread in self._threads:
            thread.join()
        if self.failure is not None:
            raise self.failure


class Channel:
    """A bounded queue between two stages whose put and get give up when the pipeline stops."""

    def __init__(self, pipeline: Pipeline, size: int) -> None:
        self.pipeline = pipeline
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.size = size

    def put(self, item: Any) -> None:
        while True:
            if self.pipeline.stop.is_set():
                raise Stopped
            try:
                self.queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self) -> Any:
        while True:
            if self.pipeline.stop.is_set():
                raise Stopped
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
