"""OpenTelemetry tracing, configured only by the standard OTEL_* environment variables.

Off (nothing imported, nothing exported) unless OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn
it off again. Spans go to the collector over OTLP/HTTP (protobuf) from a BatchSpanProcessor: a
background thread exports, a bounded queue (OTEL_BSP_MAX_QUEUE_SIZE) drops what it cannot hold, and
every lost span is counted in `facefusion_trace_spans_dropped_total`. The request thread only
enqueues, so a slow or unreachable collector never slows a request.

The tracer provider is built in the serving process itself, on first use (after any fork: a
provider's export thread does not survive one).

Context comes from the W3C `traceparent`/`tracestate` headers and from the CloudEvents
distributed-tracing extension (`ce-traceparent` in binary mode, the `traceparent` attribute in
structured mode and in each batch entry). A malformed value is ignored and a new trace starts.
When tracing is off, an incoming valid context is still passed on to reply events and written in
the request log, so a trace that Knative records keeps going through this function's replies.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import metrics

log = logging.getLogger("facefusion.tracing")

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
MAX_PEEK_BYTES = 1 << 20  # event bodies larger than this are not read for their trace context
MAX_LINKS = 128
_TRACEPARENT = re.compile(r"^(?!ff)[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
CE_ATTRIBUTES = ("id", "type", "source", "subject", "specversion", "time", "knativearrivaltime", "traceparent",
                 "tracestate")


def configured(env: dict[str, str] | os._Environ | None = None) -> bool:
    """Whether spans are exported: an OTLP endpoint is set and the SDK is not switched off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARS)


def valid_traceparent(value: Any) -> bool:
    return isinstance(value, str) and len(value) < 512 and _TRACEPARENT.match(value.strip().lower()) is not None


# -- what a request says about its trace -------------------------------------------------------------
@dataclass
class Incoming:
    """The trace context and event attributes a request carries (never raises on bad input)."""

    http: dict[str, str] = field(default_factory=dict)  # traceparent, tracestate headers
    event: dict[str, str] = field(default_factory=dict)  # a single CloudEvent's attributes (strings only)
    batch: list[dict[str, str]] = field(default_factory=list)  # each batch entry's attributes
    single_event: bool = False

    @classmethod
    def from_request(cls, request: Any) -> Incoming:
        found = cls()
        try:
            headers = request.headers
            found.http = _carrier(headers.get("traceparent"), headers.get("tracestate"))
            ctype = (request.mimetype or "").lower()
            small = (request.content_length or 0) <= MAX_PEEK_BYTES
            if ctype == STRUCTURED:
                body = json.loads(request.get_data()) if small else None
                found.event, found.single_event = _attributes(body), True
            elif "ce-specversion" in headers:
                found.event = {name: headers[f"ce-{name}"] for name in CE_ATTRIBUTES if f"ce-{name}" in headers}
                found.single_event = True
            elif ctype == BATCH and small:
                body = json.loads(request.get_data())
                if isinstance(body, list):
                    found.batch = [_attributes(item) for item in body[:MAX_LINKS]]
        except Exception:  # malformed bodies are the handler's to refuse; tracing only looks
            pass
        return found

    def events(self) -> list[dict[str, str]]:
        return [self.event] if self.event else self.batch

    def passthrough(self) -> dict[str, str]:
        """The first valid context: the HTTP headers', else the event's."""
        for carrier in (self.http, _carrier(self.event.get("traceparent"), self.event.get("tracestate"))):
            if carrier:
                return carrier
        return {}


def _carrier(traceparent: Any, tracestate: Any) -> dict[str, str]:
    if not valid_traceparent(traceparent):
        return {}
    carrier = {"traceparent": traceparent.strip()}
    if isinstance(tracestate, str) and tracestate.strip() and len(tracestate) <= 512:
        carrier["tracestate"] = tracestate.strip()
    return carrier


def _attributes(item: Any) -> dict[str, str]:
    if not isinstance(item, dict):
        return {}
    return {name: item[name] for name in CE_ATTRIBUTES if isinstance(item.get(name), str)}


# -- the per-process tracer --------------------------------------------------------------------------
class _Process:
    """The provider, tracer and cold-start span of one serving process."""

    def __init__(self, service: str, revision: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.pid = os.getpid()
        attributes: dict[str, Any] = {"service.version": revision, "faas.version": revision,
                                      "faas.name": service, "process.pid": self.pid}
        if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
            attributes["service.name"] = service
        self.provider = TracerProvider(resource=Resource.create(attributes))
        self.processor = _CountingProcessor(_CountingExporter(OTLPSpanExporter()))
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("facefusion.function")
        self.propagator = TraceContextTextMapPropagator()
        self.revision = revision
        self.cold_start: Any = None  # the cold-start span, until the first request links it
        self.cold_start_linked = False
        self.lock = threading.Lock()


@functools.cache
def _counting_classes() -> tuple[type, type]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class CountingExporter(SpanExporter):
        """The OTLP exporter, counting the spans of every batch it could not deliver."""

        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner

        def export(self, spans):
            try:
                result = self.inner.export(spans)
            except Exception:
                result = SpanExportResult.FAILURE
            if result != SpanExportResult.SUCCESS:
                metrics.SPANS_DROPPED.labels("export_failed").inc(len(spans))
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    class CountingProcessor(BatchSpanProcessor):
        """The SDK's batch processor, counting the spans its full queue drops."""

        def on_end(self, span) -> None:
            queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
            if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen and span.context.trace_flags.sampled:
                metrics.SPANS_DROPPED.labels("queue_full").inc()
            super().on_end(span)

    # the SDK warns once per dropped span; the counter says it without flooding the log
    logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
    return CountingExporter, CountingProcessor


def _CountingExporter(inner):  # noqa: N802 - builds the class on first use (the SDK is imported lazily)
    return _counting_classes()[0](inner)


def _CountingProcessor(exporter):  # noqa: N802
    return _counting_classes()[1](exporter)


_STATE: _Process | None = None
_STATE_LOCK = threading.Lock()
_IDENTITY = {"service": "facefusion", "revision": "local"}
_ENABLED = configured()


def setup(service: str, revision: str) -> None:
    """Remember who we are; the provider itself is built in the serving process on first use."""
    global _ENABLED
    _IDENTITY.update(service=service, revision=revision)
    _ENABLED = configured()
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if _ENABLED and protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (only http/protobuf): tracing is off", protocol)
        _ENABLED = False


def process() -> _Process | None:
    """This process's tracer state; built on first use in each process (after any fork)."""
    global _STATE
    if not _ENABLED:
        return None
    state = _STATE
    if state is not None and state.pid == os.getpid():
        return state
    with _STATE_LOCK:
        if _STATE is None or _STATE.pid != os.getpid():
            try:
                _STATE = _Process(_IDENTITY["service"], _IDENTITY["revision"])
            except Exception:  # a broken SDK install must not take requests down
                log.exception("tracing disabled: the OpenTelemetry SDK could not be set up")
                _disable()
                return None
        return _STATE


def _disable() -> None:
    global _ENABLED
    _ENABLED = False


def shutdown(timeout_s: float = 2.0) -> None:
    """Flush what is queued (bounded); for tests and orderly exits."""
    state = _STATE
    if state is not None and state.pid == os.getpid():
        state.processor.force_flush(int(timeout_s * 1000))


# -- spans ---------------------------------------------------------------------------------------------
_PASSTHROUGH: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("facefusion_trace_passthrough",
                                                                                    default=None)
_SINGLE_EVENT: contextvars.ContextVar[bool] = contextvars.ContextVar("facefusion_single_event", default=False)


def _context_of(state: _Process, carrier: dict[str, str]):
    """The remote span context of a carrier, or None (malformed values never raise)."""
    if not carrier:
        return None
    from opentelemetry import trace

    try:
        ctx = state.propagator.extract(carrier)
    except Exception:
        return None
    span_context = trace.get_current_span(ctx).get_span_context()
    return (ctx, span_context) if span_context.is_valid else None


def _event_span_attributes(event: dict[str, str]) -> dict[str, str]:
    names = {"id": "cloudevents.event_id", "type": "cloudevents.event_type", "source": "cloudevents.event_source",
             "subject": "cloudevents.event_subject", "specversion": "cloudevents.event_spec_version"}
    return {names[k]: v[:256] for k, v in event.items() if k in names}


@contextmanager
def server_span(request: Any, incoming: Incoming) -> Iterator[None]:
    """The request's SERVER span (current while the handler runs), or the passthrough when off."""
    state = process()
    if state is None:
        token = _PASSTHROUGH.set(incoming.passthrough())
        single = _SINGLE_EVENT.set(incoming.single_event)
        try:
            yield
        finally:
            _SINGLE_EVENT.reset(single)
            _PASSTHROUGH.reset(token)
        return
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    http = _context_of(state, incoming.http)
    event_carrier = _carrier(incoming.event.get("traceparent"), incoming.event.get("tracestate"))
    event = _context_of(state, event_carrier)
    parent = http or event
    links = []
    if http and event and event[1].span_id != http[1].span_id:
        links.append(Link(event[1], {"facefusion.link": "cloudevent.traceparent"}))
    for item in incoming.batch:
        entry = _context_of(state, _carrier(item.get("traceparent"), item.get("tracestate")))
        if entry is not None and (parent is None or entry[1].span_id != parent[1].span_id):
            links.append(Link(entry[1], {"facefusion.link": "cloudevent.traceparent", "cloudevents.event_id": item.get("id", "")}))
    attributes: dict[str, Any] = {"http.request.method": request.method, "url.path": request.path[:256],
                                  "faas.trigger": "pubsub" if incoming.events() else "http",
                                  "facefusion.revision": state.revision, **_event_span_attributes(incoming.event)}
    if incoming.batch:
        attributes["facefusion.batch_size"] = len(incoming.batch)
    with state.lock:
        if state.cold_start is not None and not state.cold_start_linked:
            state.cold_start_linked = True
            links.append(Link(state.cold_start.get_span_context(), {"facefusion.link": "cold_start"}))
            attributes["facefusion.cold_start"] = True
    span = state.tracer.start_span(request.method, context=parent[0] if parent else None, kind=SpanKind.SERVER,
                                   links=links[:MAX_LINKS], attributes=attributes)
    single = _SINGLE_EVENT.set(incoming.single_event)
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        _SINGLE_EVENT.reset(single)
        span.end()


def _current():
    """The current recording span, or None (tracing off, or outside a request)."""
    if not _ENABLED:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return span if span.is_recording() else None


def annotate_request(route: str, kind: str, status: int) -> None:
    span = _current()
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.update_name(f"{span.name} {route}" if route != "other" else span.name)
    span.set_attributes({"http.route": route, "http.response.status_code": status, "facefusion.kind": kind})
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


def record_error(exc: BaseException, code: str = "", detail: str = "") -> None:
    """An error on the current span: a problem by its code and detail (no stack: messages are the
    problem's own), anything else with its stack."""
    span = _current()
    if span is None:
        return
    if code:
        span.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": f"{code}: {detail}"[:512]})
    else:
        span.record_exception(exc)
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, code or type(exc).__name__))


def annotate(**attributes: Any) -> None:
    span = _current()
    if span is not None:
        span.set_attributes({f"facefusion.{k}": v for k, v in attributes.items() if v is not None})


@contextmanager
def job_span(event_id: str, event_type: str, source: str) -> Iterator[None]:
    """One event job: the request's own span when the request is that one event, else a child span."""
    attributes = {"cloudevents.event_id": event_id[:256], "cloudevents.event_type": event_type[:256],
                  "cloudevents.event_source": source[:256]}
    span = _current()
    if span is None:
        yield
        return
    if _SINGLE_EVENT.get():
        span.set_attributes(attributes)
        yield
        return
    state = process()
    assert state is not None
    with state.tracer.start_as_current_span(f"process {metrics.event_type_label(event_type)}", attributes=attributes,
                                            record_exception=False, set_status_on_exception=False):
        yield


def stage_hook() -> Callable[[str, int, int], None] | None:
    """A StageTimer hook that records each pipeline stage as a child of the current span."""
    span = _current()
    if span is None:
        return None
    from opentelemetry import trace

    state = process()
    parent = trace.set_span_in_context(span)

    def on_stage(name: str, start_ns: int, end_ns: int) -> None:
        try:
            child = state.tracer.start_span(name, context=parent, start_time=start_ns, attributes={"facefusion.stage": name})
            child.end(end_time=end_ns)
        except Exception:  # never fail a fusion for a span
            log.debug("stage span %s not recorded", name, exc_info=True)

    return on_stage


def stage_span(name: str, start_ns: int, end_ns: int, error: BaseException | None = None) -> None:
    span = _current()
    if span is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    state = process()
    child = state.tracer.start_span(name, context=trace.set_span_in_context(span), start_time=start_ns,
                                    attributes={"facefusion.stage": name})
    if error is not None:
        child.set_status(Status(StatusCode.ERROR, type(error).__name__))
    child.end(end_time=end_ns)


def event_extensions() -> dict[str, str]:
    """`traceparent`/`tracestate` for an event this function emits (the CloudEvents distributed-tracing
    extension): the current span's context, else the one the request brought."""
    span = _current()
    if span is None:
        return dict(_PASSTHROUGH.get() or {})
    state = process()
    carrier: dict[str, str] = {}
    from opentelemetry import trace

    state.propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def log_fields() -> dict[str, Any]:
    """Trace fields for a JSON log line: `trace_id`/`span_id` (Loki's derived fields, Grafana) and
    `logging.googleapis.com/trace`/`spanId`/`trace_sampled` (Cloud Logging)."""
    span = _current()
    if span is not None:
        ctx = span.get_span_context()
        trace_id, span_id, sampled = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", ctx.trace_flags.sampled
    else:
        carrier = _PASSTHROUGH.get()
        if not carrier:
            return {}
        parts = carrier["traceparent"].split("-")
        trace_id, span_id, sampled = parts[1], "", bool(int(parts[3], 16) & 1)
    fields: dict[str, Any] = {"trace_id": trace_id}
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    fields["logging.googleapis.com/trace"] = f"projects/{project}/traces/{trace_id}" if project else trace_id
    if span_id:
        fields["span_id"] = span_id
        fields["logging.googleapis.com/spanId"] = span_id
    fields["logging.googleapis.com/trace_sampled"] = sampled
    return fields


# -- the cold start -----------------------------------------------------------------------------------
def start_cold_start(process_start_s: float) -> None:
    """The cold-start span, from process start; it ends when the warm-up ends (`end_cold_start`)."""
    state = process()
    if state is None:
        return
    from opentelemetry.context import Context

    with state.lock:
        if state.cold_start is None:
            state.cold_start = state.tracer.start_span(
                "cold_start", context=Context(), start_time=int(process_start_s * 1e9),
                attributes={"facefusion.revision": state.revision, "process.pid": state.pid})


def end_cold_start(process_start_s: float, timings_s: dict[str, float], reason: str = "") -> None:
    """End the cold-start span with its parts as children: model load (verification and session
    creation, one step in the pipeline's loader) and warm-up, placed from the warm-up's timings."""
    state = process()
    if state is None or state.cold_start is None or not state.cold_start.is_recording():
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = state.cold_start
    if reason:
        span.set_status(Status(StatusCode.ERROR, reason[:256]))
        span.end()
        return
    ns = 1_000_000_000
    ready = int((process_start_s + timings_s.get("cold_start", 0.0)) * ns)
    warm = int(timings_s.get("warmup", 0.0) * ns)
    load = int(timings_s.get("model_load", 0.0) * ns)
    parent = trace.set_span_in_context(span)
    for name, start, end in (("model_load", ready - warm - load, ready - warm), ("warmup", ready - warm, ready)):
        if end > start:
            state.tracer.start_span(name, context=parent, start_time=start).end(end_time=end)
    span.set_attributes({f"facefusion.{k}_s": v for k, v in timings_s.items()})
    span.end(end_time=ready)
