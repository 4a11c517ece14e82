"""Tracing, metrics and the observability manifests (docs/observability.md).

The traces are checked end to end: the function runs as production runs it (functions-framework,
gunicorn, the worker forked after import) and exports to an OTLP/HTTP receiver started here, which
decodes the protobuf `ExportTraceServiceRequest`s it gets.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from .conftest import REPO, shared_file
from .server import FunctionServer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PIPELINE_STAGES = {"decode", "detect", "embed", "swap", "paste", "encode"}


# -- a local OTLP/HTTP receiver -------------------------------------------------------------------------
class OtlpReceiver:
    """POST /v1/traces (protobuf) on loopback; `spans` holds every span received, flattened."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                receiver.add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, request) -> None:
        def value(v):
            return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None

        with self.lock:
            for rs in request.resource_spans:
                resource = {a.key: value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append({
                            "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex(),
                            "name": s.name, "kind": s.kind, "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                            "links": [(link.trace_id.hex(), link.span_id.hex(), {a.key: value(a.value) for a in link.attributes})
                                      for link in s.links],
                            "status": s.status.code, "events": [e.name for e in s.events], "resource": resource,
                        })

    def wait_for(self, predicate, timeout: float = 20) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no such span among {[(s['name'], s['trace_id']) for s in self.spans]}")

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def receiver():
    pytest.importorskip("opentelemetry.proto")
    r = OtlpReceiver()
    yield r
    r.stop()


def _storage_env(root: Path, model_root: Path) -> dict[str, str]:
    (root / "faces").mkdir(parents=True, exist_ok=True)
    (root / "in" / "bkt" / "uploads").mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(parents=True, exist_ok=True)
    (root / "faces" / "obama.jpg").write_bytes(shared_file("images", "obama.jpg").read_bytes())
    return {"MODEL_PATH": str(model_root), "CACHE_PATH": str(root / "cache"), "K_REVISION": "facefusion-00007",
            "K_SERVICE": "facefusion", "SOURCE_FACE_URI": f"file://{root}/faces/obama.jpg",
            "INPUT_URI_TEMPLATE": f"file://{root}/in/{{bucket}}/{{name}}", "OUTPUT_URI": f"file://{root}/out/{{stem}}-fused.jpg",
            "ALLOWED_URI_PREFIXES": f"file://{root}/"}


@pytest.fixture(scope="module")
def traced(receiver, model_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("traced")
    env = {**_storage_env(root, model_root), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_SERVICE_NAME": "facefusion-test"}
    server = FunctionServer(env)
    server.root = root
    yield server
    server.stop()


def _gcs_event(root: Path, name: str, traceparent: str | None = None, **headers: str) -> tuple[dict, bytes]:
    (root / "in" / "bkt" / name).parent.mkdir(parents=True, exist_ok=True)
    (root / "in" / "bkt" / name).write_bytes(shared_file("images", "two_people.jpg").read_bytes())
    event_id = str(uuid.uuid4())
    h = {"ce-specversion": "1.0", "ce-type": "google.cloud.storage.object.v1.finalized", "ce-id": event_id,
         "ce-source": "//storage.googleapis.com/projects/_/buckets/bkt", "ce-subject": f"objects/{name}",
         "content-type": "application/json", **headers}
    if traceparent is not None:
        h["ce-traceparent"] = traceparent
    return h, json.dumps({"bucket": "bkt", "name": name, "generation": event_id}).encode()


def _children(spans: list[dict], parent_id: str) -> list[dict]:
    return [s for s in spans if s["parent"] == parent_id]


# -- one storage event, end to end ----------------------------------------------------------------------
def test_a_storage_event_is_one_trace_through_the_function_and_its_reply(traced, receiver):
    headers, body = _gcs_event(traced.root, "uploads/a.jpg", TRACEPARENT)
    r = requests.post(traced.url + "/", headers=headers, data=body, timeout=120)
    assert r.status_code == 200, r.text
    # the reply event (binary mode) carries the trace: same trace id, our server span as its parent
    assert r.headers["ce-type"] == "dev.facefusion.fusion.completed"
    reply_trace = r.headers["ce-traceparent"].split("-")
    assert reply_trace[1] == TRACE_ID

    server = receiver.wait_for(lambda s: s["trace_id"] == TRACE_ID and s["kind"] == 2)[0]  # SPAN_KIND_SERVER
    assert server["parent"] == PARENT_ID and server["span_id"] == reply_trace[2]
    assert server["name"] == "POST /"
    attrs = server["attributes"]
    assert attrs["cloudevents.event_type"] == "google.cloud.storage.object.v1.finalized"
    assert attrs["cloudevents.event_id"] == headers["ce-id"]
    assert attrs["facefusion.revision"] == "facefusion-00007"
    assert attrs["facefusion.faces_found"] == 2 and attrs["facefusion.faces_swapped"] == 1
    assert attrs["facefusion.model_version"] and attrs["http.response.status_code"] == 200
    assert attrs["facefusion.outcome"] == "done"
    assert server["resource"]["service.name"] == "facefusion-test"
    assert server["resource"]["service.version"] == "facefusion-00007"

    wanted = PIPELINE_STAGES | {"storage_read", "storage_write"}
    deadline = time.time() + 10
    while time.time() < deadline and not wanted <= {s["name"] for s in _children(receiver.spans, server["span_id"])}:
        time.sleep(0.05)
    children = _children(receiver.spans, server["span_id"])
    assert wanted <= {s["name"] for s in children}
    in_trace = [s for s in receiver.spans if s["trace_id"] == TRACE_ID]
    assert all(s["trace_id"] == TRACE_ID for s in children) and len(in_trace) >= len(wanted) + 1
    for child in children:  # inside the request's span, in time
        assert server["start"] <= child["start"] <= child["end"] <= server["end"]

    # the request log line correlates: the trace and our span, in Loki's and Cloud Logging's fields
    line = next(json.loads(x) for x in traced.logs().splitlines() if x.startswith("{") and headers["ce-id"] in x)
    assert line["trace_id"] == TRACE_ID and line["span_id"] == server["span_id"]
    assert line["logging.googleapis.com/spanId"] == server["span_id"]
    assert line["logging.googleapis.com/trace_sampled"] is True


def test_the_cold_start_is_a_span_linked_from_the_first_request(traced, receiver):
    cold = receiver.wait_for(lambda s: s["name"] == "cold_start")[0]
    assert cold["parent"] == ""
    assert {s["name"] for s in _children(receiver.spans, cold["span_id"])} >= {"model_load"}
    assert "facefusion.cold_start_s" in cold["attributes"]
    linked = receiver.wait_for(lambda s: any(link[1] == cold["span_id"] for link in s["links"]))
    assert len(linked) == 1 and linked[0]["attributes"]["facefusion.cold_start"] is True


@pytest.mark.parametrize("mode", ["structured", "http-header"])
def test_context_from_structured_events_and_http_headers(traced, receiver, mode):
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{PARENT_ID}-01"
    event = {"specversion": "1.0", "type": "google.cloud.storage.object.v1.deleted", "id": str(uuid.uuid4()),
             "source": "//storage.googleapis.com/projects/_/buckets/bkt", "data": {"bucket": "bkt", "name": "x.jpg"}}
    if mode == "structured":
        r = requests.post(traced.url + "/", data=json.dumps({**event, "traceparent": traceparent}),
                          headers={"content-type": "application/cloudevents+json"}, timeout=30)
    else:
        r = requests.post(traced.url + "/", data=json.dumps(event),
                          headers={"content-type": "application/cloudevents+json", "traceparent": traceparent}, timeout=30)
    assert r.status_code == 202
    span = receiver.wait_for(lambda s: s["trace_id"] == trace_id)[0]
    assert span["parent"] == PARENT_ID and span["attributes"]["facefusion.outcome"] == "ignored"


@pytest.mark.parametrize("bad", [
    "garbage", f"00-{'0' * 32}-{PARENT_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01", f"ff-{TRACE_ID}-{PARENT_ID}-01",
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", f"00-{TRACE_ID.upper()}x-{PARENT_ID}-01", "00-" + "a" * 3000, "\u00e9",
])
def test_a_malformed_traceparent_starts_a_new_trace(traced, receiver, bad):
    event_id = str(uuid.uuid4())
    headers = {"ce-specversion": "1.0", "ce-type": "google.cloud.storage.object.v1.deleted", "ce-id": event_id,
               "ce-source": "//storage.googleapis.com/projects/_/buckets/bkt", "content-type": "application/json",
               "ce-traceparent": bad, "traceparent": bad, "tracestate": "=,=" * 200}
    r = requests.post(traced.url + "/", headers={k: v.encode("utf-8") for k, v in headers.items()}, data=b"{}", timeout=30)
    assert r.status_code == 202
    span = receiver.wait_for(lambda s: s["attributes"].get("cloudevents.event_id") == event_id)[0]
    assert span["parent"] == "" and span["trace_id"] not in (TRACE_ID, "0" * 32)


def test_batch_entries_are_linked_and_each_job_has_a_span(traced, receiver):
    ids = [uuid.uuid4().hex for _ in range(2)]
    batch = [{"specversion": "1.0", "type": "google.cloud.storage.object.v1.deleted", "id": f"b{i}", "source": "s",
              "traceparent": f"00-{tid}-{PARENT_ID}-01"} for i, tid in enumerate(ids)]
    r = requests.post(traced.url + "/", data=json.dumps(batch), headers={"content-type": "application/cloudevents-batch+json"},
                      timeout=30)
    assert r.status_code == 200
    server = receiver.wait_for(lambda s: s["kind"] == 2 and {link[0] for link in s["links"]} >= set(ids))[0]
    jobs = receiver.wait_for(lambda s: s["parent"] == server["span_id"] and s["name"].startswith("process "))
    deadline = time.time() + 5
    while len(jobs) < 2 and time.time() < deadline:
        jobs = _children(receiver.spans, server["span_id"])
        time.sleep(0.05)
    assert {j["attributes"]["cloudevents.event_id"] for j in jobs} == {"b0", "b1"}


def test_metrics_answer_operators_questions(traced):
    headers, body = _gcs_event(traced.root, "uploads/m.jpg", None,
                               **{"ce-knativearrivaltime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3))})
    assert requests.post(traced.url + "/", headers=headers, data=body, timeout=120).status_code == 200
    assert requests.post(traced.url + "/", headers=headers, data=body, timeout=120).status_code == 202  # duplicate
    text = requests.get(traced.url + "/metrics", timeout=10).text
    gcs = 'event_type="google.cloud.storage.object.v1.finalized"'
    assert re.search(rf'facefusion_events_total\{{{gcs},outcome="done"\}} [1-9]', text)
    assert re.search(rf'facefusion_events_total\{{{gcs},outcome="duplicate"\}} [1-9]', text)
    wait = re.search(rf'facefusion_queue_wait_seconds_sum\{{{gcs}\}} ([0-9.e+-]+)', text)
    assert wait and float(wait.group(1)) >= 3
    assert re.search(r'facefusion_request_duration_seconds_count\{kind="cloudevent",route="/",status="200"\} [1-9]', text)
    assert re.search(r'facefusion_stage_seconds_count\{stage="storage_write"\} [1-9]', text)
    assert 'facefusion_cold_start_duration_seconds_count{revision="facefusion-00007"} 1.0' in text
    assert 'facefusion_model_load_duration_seconds_count{revision="facefusion-00007"} 1.0' in text
    assert 'facefusion_info{revision="facefusion-00007",service="facefusion"} 1.0' in text


def test_event_type_labels_are_bounded():
    from function.metrics import event_type_label

    assert event_type_label("google.cloud.storage.object.v1.finalized") == "google.cloud.storage.object.v1.finalized"
    assert event_type_label("s3:ObjectCreated:Put") == "s3:ObjectCreated:Put"
    assert event_type_label("dev.facefusion.fusion.requested") == "dev.facefusion.fusion.requested"
    for other in ("x" * 10, "com.amazonaws.s3." + "a" * 100, "google.cloud.storage.object.v1.{bad}", ""):
        assert event_type_label(other) == "other"


# -- a collector that fails or hangs --------------------------------------------------------------------
def _drops(text: str, reason: str) -> float:
    found = re.search(rf'facefusion_trace_spans_dropped_total\{{reason="{reason}"\}} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


def test_a_hanging_collector_never_slows_a_request_and_drops_are_counted(model_root, tmp_path):
    """A collector that accepts connections and never answers: requests keep their pace, the export
    gives up after OTEL_EXPORTER_OTLP_TIMEOUT, and the spans that did not fit the queue are counted."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # never accepted: connects succeed, no answer ever comes
    env = {**_storage_env(tmp_path, model_root), "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{hole.getsockname()[1]}",
           "OTEL_BSP_SCHEDULE_DELAY": "10", "OTEL_BSP_MAX_QUEUE_SIZE": "4", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "2"}
    server = FunctionServer(env)
    try:
        files = {"source": shared_file("images", "obama.jpg").read_bytes(), "target": shared_file("images", "obama2.jpg").read_bytes()}
        times = []
        for _ in range(4):
            start = time.perf_counter()
            assert requests.post(server.url + "/", files=files, timeout=60).status_code == 200
            times.append(time.perf_counter() - start)
        assert max(times) < 2, times  # no request waited for the collector
        deadline = time.time() + 30
        text = ""
        while time.time() < deadline:
            text = requests.get(server.url + "/metrics", timeout=10).text
            if _drops(text, "queue_full") > 0 and _drops(text, "export_failed") > 0:
                break
            time.sleep(0.5)
        assert _drops(text, "queue_full") > 0 and _drops(text, "export_failed") > 0, text
    finally:
        server.stop()
        hole.close()


# -- tracing off: nothing imported, nothing exported ----------------------------------------------------
def test_without_an_endpoint_tracing_costs_nothing_but_context_is_passed_on(model_root, tmp_path):
    script = f"""
import json, os, sys, time
sys.path.insert(0, {str(REPO)!r})
for k in list(os.environ):
    if k.startswith("OTEL_"):
        del os.environ[k]
os.environ.update(MODEL_PATH={str(model_root)!r}, CACHE_PATH={str(tmp_path / 'c')!r}, READY_WAIT_S="60")
import functions_framework
app = functions_framework.create_app(target="fuse", source={str(REPO / 'function' / 'main.py')!r})
client = app.test_client()
r = client.post("/", headers={{"ce-specversion": "1.0", "ce-type": "google.cloud.storage.object.v1.deleted", "ce-id": "1",
                "ce-source": "s", "content-type": "application/json", "traceparent": {TRACEPARENT!r}}}, data=b"{{}}")
assert r.status_code == 202, r.status_code
print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []  # the OpenTelemetry SDK and API were never imported
    log = json.loads(next(x for x in lines if x.startswith("{") and '"kind"' in x))
    assert log["trace_id"] == TRACE_ID and "span_id" not in log  # the caller's trace, for correlation


def test_configured_reads_only_the_standard_variables():
    from function.tracing import configured, valid_traceparent

    assert not configured({})
    assert configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert valid_traceparent(TRACEPARENT) and not valid_traceparent("00-xyz")


def test_stage_timer_hook_sees_every_stage():
    from pipeline import StageTimer

    seen = []
    timer = StageTimer(lambda name, start, end: seen.append((name, end >= start)))
    with timer.stage("decode"):
        pass
    with timer.stage("swap"):
        pass
    assert seen == [("decode", True), ("swap", True)] and set(timer.ms) == {"decode", "swap"}


# -- the observability manifests ------------------------------------------------------------------------
OBSERVABILITY = REPO / "knative" / "observability"
DURATION = r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"
# The Prometheus Operator's PrometheusRule and PodMonitor, as far as these manifests use them, written
# from its API reference (monitoring.coreos.com/v1): unknown fields are refused as the API server does.
_OBJ = {"type": "object"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "additionalProperties": False, "properties": {"groups": {"type": "array", "items": {
            "type": "object", "required": ["name", "rules"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "minLength": 1}, "interval": {"type": "string", "pattern": DURATION},
                           "limit": {"type": "integer"}, "partial_response_strategy": {"type": "string"},
                           "query_offset": {"type": "string", "pattern": DURATION},
                           "labels": _LABELS,
                           "rules": {"type": "array", "items": {
                               "type": "object", "required": ["expr"], "additionalProperties": False,
                               "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                               "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                              "expr": {"type": ["string", "integer"]},
                                              "for": {"type": "string", "pattern": DURATION},
                                              "keep_firing_for": {"type": "string", "pattern": DURATION},
                                              "labels": _LABELS, "annotations": _LABELS}}}}}}}},
    },
}
POD_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
            "selector": {"type": "object", "additionalProperties": False,
                         "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}}},
            "namespaceSelector": _OBJ, "jobLabel": {"type": "string"},
            "podMetricsEndpoints": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                "port": {"type": "string"}, "portNumber": {"type": "integer"}, "path": {"type": "string"},
                "scheme": {"enum": ["http", "https"]}, "interval": {"type": "string", "pattern": DURATION},
                "scrapeTimeout": {"type": "string", "pattern": DURATION}, "honorLabels": {"type": "boolean"},
                "authorization": {"type": "object", "additionalProperties": False, "properties": {
                    "type": {"type": "string"}, "credentials": {"type": "object", "required": ["key"],
                                                                "additionalProperties": False,
                                                                "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                                                                               "optional": {"type": "boolean"}}}}},
                "relabelings": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                    "targetLabel": {"type": "string"}, "regex": {"type": "string"}, "replacement": {"type": "string"},
                    "separator": {"type": "string"}, "modulus": {"type": "integer"},
                    "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                                        "lowercase", "uppercase", "keepequal", "dropequal"]}}}}}}}}},
    },
}
# Grafana's dashboard JSON model (schemaVersion 39), the parts this dashboard uses
_TARGET = {"type": "object", "required": ["refId", "expr"], "properties": {"refId": {"type": "string"}, "expr": {"type": "string", "minLength": 1},
                                                                         "legendFormat": {"type": "string"}, "datasource": _OBJ}}
DASHBOARD_SCHEMA = {
    "type": "object", "required": ["uid", "title", "schemaVersion", "panels", "time", "templating"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"}, "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36}, "version": {"type": "integer"}, "editable": {"type": "boolean"},
        "graphTooltip": {"enum": [0, 1, 2]}, "refresh": {"type": "string"}, "timezone": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "time": {"type": "object", "required": ["from", "to"]},
        "templating": {"type": "object", "required": ["list"], "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["name", "type"],
            "properties": {"name": {"type": "string"}, "type": {"enum": ["query", "datasource", "custom", "constant", "interval"]}}}}}},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["id", "type", "title", "gridPos"],
            "properties": {
                "id": {"type": "integer"}, "type": {"enum": ["row", "timeseries", "stat", "gauge", "table", "bargauge"]},
                "title": {"type": "string", "minLength": 1},
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"], "additionalProperties": False,
                            "properties": {k: {"type": "integer", "minimum": 0} for k in "hwxy"}},
                "targets": {"type": "array", "items": _TARGET}, "datasource": _OBJ,
                "fieldConfig": {"type": "object", "required": ["defaults"]},
            }}},
    },
}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$revision": ".*"}


def _exported_metric_names() -> set[str]:
    """Every series name the function's registry can produce, from the metric families it declares."""
    from function.metrics import REGISTRY

    names = {"facefusion_gpu_memory_used_bytes", "facefusion_gpu_memory_total_bytes", "facefusion_gpu_utilization_ratio"}
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else ():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


def _selectors(expr: str) -> set[str]:
    import promql_parser

    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _rule_doc() -> dict:
    import yaml

    return yaml.safe_load((OBSERVABILITY / "prometheus-rule.yaml").read_text())


def _dashboard() -> dict:
    return json.loads((OBSERVABILITY / "facefusion-dashboard.json").read_text())


def test_the_prometheus_rule_is_valid_and_its_promql_parses():
    import jsonschema
    import promql_parser

    pytest.importorskip("yaml")
    doc = _rule_doc()
    jsonschema.Draft7Validator(RULE_SCHEMA).validate(doc)
    rules = [r for g in doc["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert len(alerts) == len(rules)
    assert {"FacefusionErrorRate", "FacefusionLatencyP99", "FacefusionNotReadyAfterRollout",
            "FacefusionEventsDeadLettered"} <= alerts
    for rule in rules:
        promql_parser.parse(rule["expr"])
    with pytest.raises(ValueError):  # the parse check can fail
        promql_parser.parse("sum by (le (rate(x[5m]))")


def test_the_pod_monitor_is_valid_and_scrapes_what_the_service_serves():
    import jsonschema
    import yaml

    doc = yaml.safe_load((OBSERVABILITY / "pod-monitor.yaml").read_text())
    jsonschema.Draft7Validator(POD_MONITOR_SCHEMA).validate(doc)
    endpoint = doc["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["authorization"]["credentials"]["key"] == "AUTH_TOKEN"
    broken = json.loads(json.dumps(doc))
    broken["spec"]["podMetricsEndpoints"][0]["honourLabels"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(POD_MONITOR_SCHEMA).validate(broken)


def test_the_dashboard_is_valid_and_provisioned_by_a_config_map():
    import jsonschema
    import promql_parser
    import yaml

    dash = _dashboard()
    jsonschema.Draft7Validator(DASHBOARD_SCHEMA).validate(dash)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, expr
            promql_parser.parse(expr)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("latency by stage", "throughput", "error", "cold start", "pods per revision"):
        assert topic in titles
    kustomization = yaml.safe_load((OBSERVABILITY / "kustomization.yaml").read_text())
    generator = next(g for g in kustomization["configMapGenerator"] if g["name"] == "facefusion-dashboard")
    assert generator["files"] == ["facefusion-dashboard.json"]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
    assert set(kustomization["resources"]) == {"../", "pod-monitor.yaml", "prometheus-rule.yaml"}


def test_every_metric_queried_is_one_the_function_exports():
    exported = _exported_metric_names()
    queried: set[str] = set()
    for rule in (r for g in _rule_doc()["spec"]["groups"] for r in g["rules"]):
        queried |= _selectors(rule["expr"])
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            queried |= _selectors(expr)
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            queried |= set(re.findall(r"label_values\((\w+)", variable["definition"]))
    assert queried and not (queried - exported), sorted(queried - exported)
    assert "facefusion_request_duration_seconds_bucket" in queried


def test_knative_traces_go_to_the_functions_collector():
    import yaml

    docs = list(yaml.safe_load_all((OBSERVABILITY / "knative-config-observability.yaml").read_text()))
    assert {d["metadata"]["namespace"] for d in docs} == {"knative-serving", "knative-eventing"}
    kustomization = yaml.safe_load((OBSERVABILITY / "kustomization.yaml").read_text())
    patch = yaml.safe_load(kustomization["patches"][0]["patch"])
    env = {op["value"]["name"]: op["value"]["value"] for op in patch}
    collector = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    for doc in docs:
        assert doc["data"]["tracing-protocol"] == "http/protobuf"
        assert doc["data"]["tracing-endpoint"] == collector + "/v1/traces"
    readme = (REPO / "README.md").read_text()
    for name in env:  # every OTEL_* variable the deployment sets is in README's configuration table
        assert f"`{name}`" in readme, name
