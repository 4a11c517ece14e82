"""Graceful shutdown: on SIGTERM, refuse new work with 503, finish what is in flight, then exit 0.

function/serve.py calls `begin()` from its SIGTERM handler. The process marks itself as draining
(new work and `/readyz` answer 503 with Retry-After, `/healthz` stays 200, the listener stays open so
late requests get a retryable answer rather than a refused connection), waits at least DRAIN_SECONDS
(so the load balancer sees `/readyz` fail) and until in-flight fusions are done, at most
DRAIN_MAX_SECONDS, and then lets the server stop. The serving process then leaves without the
interpreter's teardown (see `_leave_quietly`).

main.py registers what "in flight" means and the two bounds with `install()` when it is imported.
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
_settings: dict[str, object] = {"inflight": lambda: 0, "minimum": 2.0, "maximum": 25.0}


def install(inflight: Callable[[], int], minimum_s: float, maximum_s: float) -> None:
    """Register the in-flight count and the drain bounds (DRAIN_SECONDS, DRAIN_MAX_SECONDS)."""
    _settings.update(inflight=inflight, minimum=minimum_s, maximum=maximum_s)


def _drain_then(stop: Callable[[], None], inflight: Callable[[], int], minimum: float, maximum: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < maximum:
        if time.monotonic() - start >= minimum and inflight() == 0:
            break
        time.sleep(0.05)
    log.info("drained after %.1f s (%d still in flight); stopping", time.monotonic() - start, inflight())
    stop()


def begin(stop: Callable[[], None]) -> bool:
    """Start draining (once) and call `stop` when done; False when a drain is already under way.
    Safe to call from a signal handler: the waiting happens in a thread."""
    if DRAINING.is_set():
        return False
    DRAINING.set()
    threading.Thread(target=_drain_then, args=(stop, _settings["inflight"], _settings["minimum"], _settings["maximum"]),
                     name="drain", daemon=True).start()
    return True


def _leave_quietly(status: int = 0) -> None:
    """End the serving process, once its server has stopped, without Python's interpreter teardown.

    The teardown runs the C++ static destructors of the native libraries (ONNX Runtime); in a process
    that never created an inference session (its models failed to load) one of them aborts with
    `terminate called after throwing an instance of 'std::system_error'`, which reads as a crash.
    Everything worth keeping is flushed first (the trace spans still queued among it); only the exit
    status matters after that.
    """
    from function import tracing  # flush what the exporter still holds: exit handlers will not run

    with contextlib.suppress(Exception):
        tracing.shutdown(timeout_s=2.0)
    logging.shutdown()
    exit_now(status)


def exit_now(status: int = 0) -> None:
    """Flush stdout and stderr and end the process with `status` at once: no exit handlers, no teardown.
    No import and no logging, so a signal handler may call it (serve.py, SIGTERM before the server runs)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # RuntimeError too: a signal may land inside a write
            stream.flush()
    os._exit(status)
