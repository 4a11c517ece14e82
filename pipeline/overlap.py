"""Work that may run beside the request's own thread: on a helper thread when one is free, else where its
result is first needed.

Why: a request at low concurrency leaves most cores (and on a GPU pod, the device) idle while its one
thread works through independent pieces: a new source's decode, detection and embedding beside the
target's (pipeline/fuser.py, on a GPU), the strips of a large JPEG (pipeline/jpeg_strips.py,
pipeline/jpeg_strip_decode.py), the large faces of a group photograph (pipeline/paste.py). Under load there is no idle core to gain, and a queue of such work behind
a few helper threads would make requests wait for each other, so work goes to a helper only when one is
free at that moment (a non-blocking semaphore) and otherwise runs in the request's thread, exactly as it
would without helpers. What is computed never depends on where it ran.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

from .config import EnvReader, read_cpu_threads, usable_cpus

T = TypeVar("T")
A = TypeVar("A")

# helper threads per process (fewer on fewer CPUs, or with CPU_THREADS, which WORKERS processes share:
# function/serve.py sets it before they start): a 4K JPEG's 8 strips at once on a quiet pod
HELPER_THREADS = min(8, read_cpu_threads(EnvReader()) or usable_cpus())

_pool: ThreadPoolExecutor | None = None
_slots = threading.BoundedSemaphore(HELPER_THREADS)
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=HELPER_THREADS, thread_name_prefix="overlap")
        return _pool


class Pending(Generic[T]):
    """A value being made on a helper thread, or to be made by the first `result()` call; `result()`
    returns it or raises what making it raised, in the calling thread, as often as it is called."""

    def __init__(self, fn: Callable[[], T] | None = None, future: Future[T] | None = None,
                 value: T | None = None) -> None:
        self._future: Future[T] | None = future
        self._fn = fn
        self._value = value
        self.on_helper = future is not None

    def result(self) -> T:
        if self._fn is not None:  # inline: made now, its outcome kept like a helper's
            fn, self._fn = self._fn, None
            self._future = Future()
            try:
                self._future.set_result(fn())
            except BaseException as exc:
                self._future.set_exception(exc)
        if self._future is not None:
            return self._future.result()
        return self._value  # type: ignore[return-value]

    def settle(self) -> None:
        """Wait until work on a helper has ended, whatever its outcome (a request that failed meanwhile
        must not leave work running outside its admission and the drain); inline work is not started."""
        if self.on_helper and self._future is not None:
            wait([self._future])


def ready(value: T) -> Pending[T]:
    """A value already at hand (a cache hit)."""
    return Pending(value=value)


def inline(fn: Callable[[], T]) -> Pending[T]:
    """Made by the first `result()` call, in its thread."""
    return Pending(fn=fn)


def start(fn: Callable[[], T]) -> Pending[T]:
    """`fn` on a helper thread if one is free now, else `inline`."""
    slots = _slots
    if not slots.acquire(blocking=False):
        return inline(fn)

    def on_helper() -> T:
        try:
            return fn()
        finally:  # before the result is set: a caller that got it finds the slot free again
            slots.release()
    try:
        return Pending(future=_helpers().submit(on_helper))
    except BaseException:  # the interpreter is shutting down: do it inline
        slots.release()
        return inline(fn)


def free_helpers() -> int:
    """How many helpers are free at this moment (a hint: another thread may take one the next moment)."""
    return _slots._value  # threading.Semaphore's count; BoundedSemaphore has no public reader


def each(fn: Callable[[A], T], items: Sequence[A]) -> list[T]:
    """`fn` of every item; the results in the items' order. The calling thread and every helper that is
    free now (up to one per item after the first) take the items in turn from one queue, so a helper
    that ends early takes the next item rather than leaving it to the caller, and with no helper free
    the caller does them all, one after another. After a failure no new item is begun; the first
    failure in the items' order is raised. Returns or raises only once no helper is still running an
    item (they may write into the same array)."""
    count = len(items)
    results: list[T | None] = [None] * count
    errors: dict[int, BaseException] = {}
    order = iter(range(count))
    lock = threading.Lock()

    def take() -> None:
        while True:
            with lock:
                index = None if errors else next(order, None)
            if index is None:
                return
            try:
                results[index] = fn(items[index])
            except BaseException as exc:  # kept for the caller, in the items' order
                with lock:
                    errors[index] = exc

    helpers: list[Pending[None]] = []
    for _ in range(count - 1):
        pending = start(take)
        if not pending.on_helper:
            break  # none free: the caller takes the rest
        helpers.append(pending)
    try:
        take()
    finally:
        for pending in helpers:
            pending.settle()
    if errors:
        raise errors[min(errors)]
    return results  # type: ignore[return-value]
