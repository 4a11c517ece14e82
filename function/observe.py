"""The function's observability hooks: what the request, event and fusion code calls, in one place.

Each hook records the Prometheus metrics (function/metrics.py) and, when tracing is on, the spans
(function/tracing.py); the call sites stay one line each. docs/observability.md describes the signals.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from . import metrics, tracing
from .problems import Problem, as_problem

# Knative Eventing redelivers these statuses (and every 5xx); any other failure is final
_KNATIVE_RETRIES = (404, 408, 409, 429)


_PROBES: set[str] = set()  # the function's probe and scrape routes: no spans for them


def install(runtime: Any, probe_paths: frozenset[str]) -> None:
    """Called once at import: set up tracing for the process that will serve, and watch its warm-up for
    the cold-start metrics and span. function/serve.py starts the watch with the warm-up at launch;
    under gunicorn it starts in the worker after the fork, else on the first request."""
    config = runtime.config
    tracing.setup(config.service, config.revision)
    metrics.INFO.labels(config.service, config.revision).set(1)
    metrics.WORKERS.set(config.workers)
    runtime.warmup.add_ready_hook(_ready_metrics(config.revision))
    metrics.IMAGE_CODEC_IMAGES.source = functools.partial(_image_codec_counts, runtime.warmup)
    _PROBES.clear()
    _PROBES.update(probe_paths)
    _WATCH.update(runtime=runtime, started=None)
    if not _WATCH["hooked"]:
        _WATCH["hooked"] = True
        os.register_at_fork(after_in_child=start_watch)


_WATCH: dict[str, Any] = {"runtime": None, "started": None, "hooked": False}
_WATCH_LOCK = threading.Lock()


def start_watch() -> None:
    """Once per runtime and process: the cold-start span and the warm-up watch."""
    key = (id(_WATCH["runtime"]), os.getpid())
    if _WATCH["started"] == key or _WATCH["runtime"] is None:
        return
    with _WATCH_LOCK:
        if _WATCH["started"] == key:
            return
        _WATCH["started"] = key
    from warmup import PROCESS_START

    tracing.start_cold_start(PROCESS_START)
    threading.Thread(target=_watch_warmup, args=(_WATCH["runtime"], PROCESS_START), name="observe-warmup",
                     daemon=True).start()


def _watch_warmup(runtime: Any, process_start: float) -> None:
    """Wait for the warm-up's verdict: the cold-start span ends with it (as an error if it failed)."""
    warmup, ended = runtime.warmup, False
    while True:
        readiness = warmup.readiness
        if readiness.ready:
            break
        if readiness.state == "failed" and not ended:
            tracing.end_cold_start(process_start, readiness.timings_s, reason=readiness.reason or "failed")
            ended = True
        if readiness.done.is_set():  # failed for good (a bad setting): nothing more to observe
            return
        # a failed load keeps ready_event set while it is retried: poll, never spin on the event
        readiness.done.wait(0.25)
    if not ended:
        tracing.end_cold_start(process_start, readiness.timings_s)


def _image_codec_counts(warmup: Any) -> Mapping[tuple[str, str], int] | None:
    """The loaded codec's images per (op, codec) at scrape time; None with OpenCV (IMAGE_CODEC's default,
    which counts nothing) or before the pipeline is loaded."""
    counts = getattr(getattr(warmup.fuser, "codec", None), "counts", None)
    return counts.snapshot() if counts is not None else None


def _ready_metrics(revision: str) -> Callable[[Any], None]:
    """The gauges and histograms of a process turning ready, set once (not on every /readyz)."""
    def record(readiness: Any) -> None:
        timings = readiness.timings_s
        metrics.READY.set(1)
        metrics.WORKERS_READY.set(1)
        metrics.COLD_START.set(timings.get("cold_start", 0))
        metrics.MODEL_LOAD.set(timings.get("model_load", 0))
        for role, provider in readiness.providers.items():
            metrics.MODEL_PROVIDER.labels(role, provider).set(1)
        for role, state in readiness.cuda_graphs.items():
            metrics.MODEL_CUDA_GRAPH.labels(role).set(1 if state.startswith("on") else 0)
        metrics.COLD_START_SECONDS.labels(revision).observe(timings.get("cold_start", 0.0))
        metrics.MODEL_LOAD_SECONDS.labels(revision).observe(timings.get("model_load", 0.0))
    return record


# -- requests -----------------------------------------------------------------------------------------
def entry(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap the functions-framework entry: a server span per request (probes and scrapes excepted)
    with the context the request carries, and the queue wait of the events it delivers."""

    @functools.wraps(handler)
    def traced(request: Any) -> Any:
        start_watch()  # a process that never forked (a debug server) starts it here
        if (request.path.rstrip("/") or "/") in _PROBES:  # no spans for probes and scrapes
            return handler(request)
        incoming = tracing.Incoming.from_request(request)
        _queue_wait(incoming.events())
        with tracing.server_span(request, incoming):
            return handler(request)

    return traced


def _event_time(value: str) -> float | None:
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _queue_wait(events: list[dict[str, str]]) -> None:
    now = time.time()
    for event in events:
        since = _event_time(event.get("knativearrivaltime") or event.get("time") or "")
        if since is not None:
            metrics.QUEUE_WAIT.labels(metrics.event_type_label(event.get("type", ""))).observe(max(0.0, now - since))


def observe_request(route: str, kind: str, status: int, seconds: float) -> None:
    """One answered request: counted, timed, and its span named and given its status."""
    metrics.REQUESTS.labels(route, kind, str(status)).inc()
    metrics.REQUEST_SECONDS.labels(route, kind, str(status)).observe(seconds)
    tracing.annotate_request(route, kind, status)


def record_error(exc: BaseException, problem: Problem | None) -> None:
    """An error the entry's boundary turned into `problem` (None: unexpected), on the request's span."""
    if problem is None:
        tracing.record_error(exc)
    else:
        tracing.record_error(exc, problem.code, problem.detail)


def log_fields() -> dict[str, Any]:
    return tracing.log_fields()


def event_extensions() -> dict[str, str]:
    return tracing.event_extensions()


# -- events -------------------------------------------------------------------------------------------
def event_job(run: Callable[[Any, Any], dict[str, Any]]) -> Callable[[Any, Any], dict[str, Any]]:
    """Wrap `run_job`: the outcome of each event by type (done, duplicate, ignored, retry, failed),
    and the job's attributes on its span."""

    @functools.wraps(run)
    def observed(rt: Any, job: Any) -> dict[str, Any]:
        label = metrics.event_type_label(job.event_type)
        with tracing.job_span(job.event_id, job.event_type, job.source):
            try:
                outcome = run(rt, job)
            except Exception as exc:
                problem = as_problem(exc)
                retry = problem is None or problem.status >= 500 or problem.status in _KNATIVE_RETRIES
                metrics.EVENTS.labels(label, "retry" if retry else "failed").inc()
                record_error(exc, problem)
                raise
            metrics.EVENTS.labels(label, str(outcome.get("status", "done"))).inc()
            tracing.annotate(outcome=outcome.get("status"))
            return outcome

    return observed


# -- fusions ------------------------------------------------------------------------------------------
def stage_hook() -> Callable[[str, int, int], None] | None:
    """The StageTimer hook for this request (None when tracing is off: the timer then costs nothing more)."""
    return tracing.stage_hook()


def fused(report: Any) -> None:
    """A fusion's result on the current span: faces found and swapped, model version."""
    tracing.annotate(faces_found=report.faces_found, faces_swapped=report.faces_swapped,
                     model_version=report.model_version)


def inflight_rejected() -> None:
    metrics.INFLIGHT_REJECTED.inc()


@contextmanager
def stage(name: str) -> Iterator[None]:
    """A stage outside the pipeline (storage_read, storage_write): its histogram and its span."""
    start, wall, error = time.perf_counter(), time.time_ns(), None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        metrics.STAGE_SECONDS.labels(name).observe(time.perf_counter() - start)
        tracing.stage_span(name, wall, time.time_ns(), error)
