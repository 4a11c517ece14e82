"""Graceful shutdown: on SIGTERM, refuse new work with 503, finish what is in flight, then exit.

gunicorn's threaded worker reacts to SIGTERM by closing its listener at once, so a request that
arrives in the last moments gets a refused connection instead of a retryable answer, and Knative
Eventing cannot tell that from a crash. functions-framework gives no access to gunicorn's server
hooks, so this module wraps the worker's SIGTERM handler (installed in the worker after the fork):
the wrapper marks the process as draining, and only once in-flight fusions are done (and at least
DRAIN_SECONDS have passed, so the load balancer sees /readyz fail) hands over to gunicorn's own
handling. DRAIN_MAX_SECONDS bounds the wait below gunicorn's 30 s graceful timeout. The worker then
leaves without the interpreter's teardown (see `_leave_quietly`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("facefusion.shutdown")
DRAINING = threading.Event()


def _drain_then(original: Callable[[], None], inflight: Callable[[], int], minimum: float, maximum: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < maximum:
        if time.monotonic() - start >= minimum and inflight() == 0:
            break
        time.sleep(0.05)
    log.info("drained after %.1f s (%d still in flight); stopping", time.monotonic() - start, inflight())
    original()


def install(inflight: Callable[[], int], minimum_s: float, maximum_s: float) -> bool:
    """Wrap gunicorn's threaded worker SIGTERM handler; False when that worker class is not there."""
    try:
        from gunicorn.workers.gthread import ThreadWorker
    except ImportError:
        return False
    original = ThreadWorker.handle_exit
    if getattr(original, "_facefusion_drain", False):
        return True

    def handle_exit(self, sig, frame) -> None:  # runs in the worker's main thread, as a signal handler
        if DRAINING.is_set():
            return
        DRAINING.set()
        threading.Thread(target=_drain_then, args=(lambda: original(self, sig, frame), inflight, minimum_s, maximum_s),
                         name="drain", daemon=True).start()

    handle_exit._facefusion_drain = True  # type: ignore[attr-defined]
    ThreadWorker.handle_exit = handle_exit
    original_run = ThreadWorker.run

    def run(self) -> None:
        original_run(self)
        _leave_quietly()

    ThreadWorker.run = run
    return True


def _leave_quietly() -> None:
    """End a worker whose loop has finished without Python's interpreter teardown.

    gunicorn ends a worker with sys.exit(0), whose teardown runs the C++ static destructors of the
    native libraries the master imported before the fork. In a worker that never created an inference
    session (its models failed to load) one of them aborts the process with `terminate called after
    throwing an instance of 'std::system_error'`, which reads as a crash. Everything worth keeping is
    flushed first; gunicorn's master only needs the exit status.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)
