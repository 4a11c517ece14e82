"""The functions-framework target `fuse`: one HTTP entry for every route, method and event kind.

    functions-framework --source function/main.py --target fuse

Importing this module loads no model: functions-framework imports it in gunicorn's master and then
forks the worker. A fork hook starts the warm-up in the worker; a process that never forks (the
Flask debug server) starts it on its first request.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import posixpath
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # functions-framework loads this file by path

import flask  # noqa: E402
from cloudevents.conversion import to_binary  # noqa: E402
from cloudevents.http import CloudEvent  # noqa: E402

from function import demo, events, metrics, shutdown, storage  # noqa: E402
from function.config import FunctionConfig  # noqa: E402
from function.fusion import InflightLimiter, fusion_headers, output_format, parse_options, run_fusion  # noqa: E402
from function.openapi import SPEC  # noqa: E402
from function.problems import Problem, from_pipeline  # noqa: E402
from pipeline import Fuser, ImageLimits, InvalidOptions, PipelineError, StageTimer, normalise_format  # noqa: E402
from warmup import Warmup  # noqa: E402

log = logging.getLogger("facefusion.function")
CONFIG = FunctionConfig.from_env()
WARMUP = Warmup()  # reads the pipeline's settings in the warm-up thread: a bad value fails readiness, not import
LIMITER = InflightLimiter(CONFIG.max_inflight)
ALLOW = storage.AllowList(CONFIG.allowed_prefixes)
MARKER_SUFFIX = ".facefusion.json"
PUBLIC_PATHS = ("/healthz", "/readyz")


def _output_prefix(template: str | None) -> str | None:
    """The fixed part of OUTPUT_URI before its first placeholder: objects under it are our outputs."""
    if not template:
        return None
    fixed = template.split("{", 1)[0]
    try:
        norm = storage.normalise(fixed)
    except Problem:
        return None
    return norm + "/" if fixed.endswith("/") and not norm.endswith("/") else norm


OUTPUT_PREFIX = _output_prefix(CONFIG.output_uri)

os.register_at_fork(after_in_child=WARMUP.ensure_started)
shutdown.install(lambda: LIMITER.active)


# -- helpers -------------------------------------------------------------------------------------
_log_lock = threading.Lock()


def _log(entry: dict[str, Any]) -> None:
    """One JSON line per request on stdout; the lock keeps lines from concurrent threads whole."""
    line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
    with _log_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def _fuser() -> Fuser:
    WARMUP.ensure_started()
    if not WARMUP.readiness.ready and CONFIG.request_wait_s > 0:
        WARMUP.wait(CONFIG.request_wait_s)
    readiness = WARMUP.readiness
    if readiness.state == "failed":
        raise Problem(503, "not-ready", f"models failed to load: {readiness.reason}", retry_after=30)
    if not readiness.ready or WARMUP.fuser is None:
        raise Problem(503, "not-ready", f"models are not ready yet ({readiness.state})", retry_after=2)
    return WARMUP.fuser


def _check_auth(request: flask.Request) -> None:
    if not CONFIG.auth_token or request.path in PUBLIC_PATHS:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), CONFIG.auth_token.encode()):
        raise Problem(401, "unauthorized", "a valid 'Authorization: Bearer' token is required")


def _json_body(request: flask.Request) -> Any:
    try:
        return json.loads(request.get_data() or b"null")
    except (ValueError, RecursionError) as exc:
        raise Problem(400, "malformed-json", "the body is not valid JSON") from exc


def _max_bytes() -> int:
    """MAX_IMAGE_BYTES as the loaded pipeline reads it (its default until then: no fusion runs before)."""
    fuser = WARMUP.fuser
    return (fuser.settings.limits if fuser else ImageLimits()).max_bytes


def _image_ref(value: Any, name: str) -> tuple[str, str | bytes]:
    """Parse a JSON image field without any I/O: ("uri", checked URI) or ("bytes", decoded base64).

    Accepts a URI, a data: URL, {"uri": …}, {"base64": …} or bare base64. Every URI is checked against
    the allow-list here, so a request naming one forbidden URI reads nothing at all.
    """
    if isinstance(value, dict):
        if isinstance(value.get("uri"), str):
            return "uri", ALLOW.check(value["uri"])
        value = value.get("base64")
    if not isinstance(value, str) or not value:
        raise Problem(400, "missing-field", f"'{name}' must be a URI or base64 image")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    elif "://" in value:
        return "uri", ALLOW.check(value)
    if len(value) > _max_bytes() * 4 // 3 + 8:
        raise Problem(413, "image-too-large", f"'{name}' exceeds the byte limit")
    try:
        return "bytes", base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise Problem(400, "invalid-base64", f"'{name}' is neither a URI nor valid base64") from exc


def _fetch(ref: tuple[str, str | bytes]) -> bytes:
    kind, value = ref
    if kind == "uri":
        return storage.read_bytes(str(value), _max_bytes(), CONFIG.storage_timeout_s)
    return bytes(value)  # type: ignore[arg-type]


def _image_response(result, timer: StageTimer) -> flask.Response:
    return flask.Response(result.data, status=200, mimetype=result.media_type,
                          headers=fusion_headers(result, timer, CONFIG.revision))


# -- direct fusion -------------------------------------------------------------------------------
def _multipart(request: flask.Request) -> flask.Response:
    limit = _max_bytes()
    if request.content_length is not None and request.content_length > 3 * limit + (1 << 20):
        raise Problem(413, "request-too-large", "the request body exceeds the limit for three images")
    files = request.files
    for name in ("source", "target"):
        if name not in files:
            raise Problem(400, "missing-field", f"multipart field '{name}' (a file) is required")
    blobs = {}
    for name in ("source", "target", "reference"):
        if name in files:
            data = files[name].read(limit + 1)
            if len(data) > limit:
                raise Problem(413, "image-too-large", f"'{name}' exceeds {limit} bytes")
            blobs[name] = data
    return _fuse_direct(lambda: blobs, dict(request.form), request.headers.get("Accept", ""), request.form.get("output"))


def _json_direct(body: dict, request: flask.Request) -> flask.Response:
    for name in ("source", "target"):
        if name not in body:
            raise Problem(400, "missing-field", f"JSON field '{name}' is required")
    options = body.get("options") if isinstance(body.get("options"), dict) else {
        k: v for k, v in body.items() if k not in ("source", "target", "reference", "output")}
    refs = {name: _image_ref(body[name], name) for name in ("source", "target", "reference") if name in body}
    return _fuse_direct(lambda: {name: _fetch(ref) for name, ref in refs.items()}, options,
                        request.headers.get("Accept", ""), body.get("output"))


def _fuse_blobs(fuser: Fuser, blobs: dict[str, bytes], raw: dict, fmt: str, quality: int) -> tuple[Any, StageTimer]:
    """The fusion both the direct and the event path run once their inputs are in memory."""
    timer = StageTimer()
    reference = None
    if "reference" in blobs:
        try:
            reference = fuser.decode(blobs["reference"])
        except PipelineError as exc:
            raise from_pipeline(exc) from exc
    result = run_fusion(fuser, blobs["source"], blobs["target"], parse_options(raw, reference), fmt, quality, timer)
    return result, timer


def _fuse_direct(fetch: Callable[[], dict[str, bytes]], raw: dict, accept: str, output: Any) -> flask.Response:
    """Check the output URI and options, then take a fusion slot, fetch the inputs and fuse."""
    fuser = _fuser()
    if output is not None and not isinstance(output, str):
        raise Problem(400, "invalid-uri", "'output' must be a URI")
    out_uri = ALLOW.check(output) if output else None
    fmt, quality = output_format(raw, accept, default=_ext_format(out_uri) if out_uri else "jpeg")
    with LIMITER.slot():
        result, timer = _fuse_blobs(fuser, fetch(), raw, fmt, quality)
        if out_uri is None:
            return _image_response(result, timer)
        storage.write_atomic(out_uri, result.data, CONFIG.storage_timeout_s)
    body = {"output": out_uri, "media_type": result.media_type, "revision": CONFIG.revision, **result.report.as_dict()}
    return flask.Response(json.dumps(body), status=200, mimetype="application/json",
                          headers=fusion_headers(result, timer, CONFIG.revision))


def _ext_format(uri: str) -> str:
    """The output format an output URI's extension names; JPEG when it names none we write."""
    try:
        return normalise_format(posixpath.splitext(uri)[1].lstrip("."))
    except InvalidOptions:
        return "jpeg"


# -- events ------------------------------------------------------------------------------------------
def _own_output(in_uri: str) -> bool:
    return in_uri.endswith(MARKER_SUFFIX) or bool(OUTPUT_PREFIX and in_uri.startswith(OUTPUT_PREFIX))


def _already_done(out_uri: str, identity: str) -> bool:
    """At-least-once delivery: the marker beside the output names the input version it was made from."""
    marker = storage.read_json(out_uri + MARKER_SUFFIX, CONFIG.storage_timeout_s)
    return bool(marker) and marker.get("input") == identity and storage.exists(out_uri, CONFIG.storage_timeout_s)


def _run_storage_job(job: events.EventJob) -> dict[str, Any]:
    obj = job.storage
    assert obj is not None
    in_uri = ALLOW.check(events.input_uri(obj, CONFIG.input_uri_template))
    if _own_output(in_uri):
        return {"status": "ignored", "reason": "the object is one of this function's outputs"}
    if not CONFIG.output_uri:
        raise Problem(503, "misconfigured", "OUTPUT_URI is not set, so storage events have nowhere to go", retry_after=30)
    out_uri = ALLOW.check(events.render_template(CONFIG.output_uri, obj))
    identity = f"{in_uri}#{obj.version}"
    if _already_done(out_uri, identity):
        return {"status": "duplicate", "output": out_uri}
    source_uri = obj.source_face or CONFIG.source_face_uri
    if not source_uri:
        raise Problem(400, "no-source-face-uri", "the object names no source face and SOURCE_FACE_URI is not set")
    return _fuse_uris(source_uri, in_uri, out_uri, {}, identity, job)


def _fuse_uris(source_uri: str, target_uri: str, out_uri: str, raw: dict, identity: str,
               job: events.EventJob) -> dict[str, Any]:
    fuser = _fuser()
    fmt, quality = output_format(raw, "", default=_ext_format(out_uri))
    refs = {"source": source_uri, "target": target_uri}
    if raw.get("reference") is not None:
        refs["reference"] = raw["reference"]
    checked = {name: _image_ref(value, name) for name, value in refs.items()}  # every URI, before any read
    with LIMITER.slot():
        result, _ = _fuse_blobs(fuser, {name: _fetch(ref) for name, ref in checked.items()}, raw, fmt, quality)
        storage.write_atomic(out_uri, result.data, CONFIG.storage_timeout_s)
        marker = {"input": identity, "event_id": job.event_id, "revision": CONFIG.revision,
                  "model_version": result.report.model_version, "faces_swapped": result.report.faces_swapped,
                  "written_at": time.time()}
        storage.write_atomic(out_uri + MARKER_SUFFIX, json.dumps(marker).encode(), CONFIG.storage_timeout_s)
    return {"status": "done", "output": out_uri, "faces_found": result.report.faces_found,
            "faces_swapped": result.report.faces_swapped, "model_version": result.report.model_version,
            "timings_ms": result.report.timings_ms}


def _run_request_job(job: events.EventJob) -> dict[str, Any]:
    data = job.request or {}
    for name in ("source", "target", "output"):
        if not isinstance(data.get(name), str):
            raise Problem(400, "malformed-event", f"{events.FUSION_REQUESTED} data needs a '{name}' URI")
    target = ALLOW.check(data["target"])
    out_uri = ALLOW.check(data["output"])
    identity = f"{target}#{job.event_id}"
    if _already_done(out_uri, identity):
        return {"status": "duplicate", "output": out_uri}
    options = data.get("options") if isinstance(data.get("options"), dict) else {}
    return _fuse_uris(data["source"], target, out_uri, options, identity, job)


def _run_job(job: events.EventJob) -> dict[str, Any]:
    base = {"id": job.event_id, "type": job.event_type}
    if job.ignored:
        return {**base, "status": "ignored", "reason": job.ignored}
    if job.request is not None:
        return {**base, **_run_request_job(job)}
    return {**base, **_run_storage_job(job)}


def _reply(job: events.EventJob, outcome: dict[str, Any]) -> flask.Response:
    if outcome["status"] != "done" or not CONFIG.reply_events:
        return flask.Response(status=202)
    reply = CloudEvent({
        "type": events.FUSION_COMPLETED,
        "source": f"/facefusion/{CONFIG.service}/{CONFIG.revision}",
        "id": str(uuid.uuid4()),
        "subject": outcome["output"],
        "datacontenttype": "application/json",
        "causationid": job.event_id,
    }, {**{k: v for k, v in outcome.items() if k not in ("id", "type", "status")}, "revision": CONFIG.revision,
        "input_event": {"id": job.event_id, "type": job.event_type, "source": job.source}})
    headers, body = to_binary(reply)
    return flask.Response(body, status=200, headers=headers)


def _run_batch(body: bytes) -> flask.Response:
    jobs: list[events.EventJob | Problem] = []
    for item in events.parse_batch(body):
        jobs.append(item if isinstance(item, Problem) else events.from_cloudevent(item))
    return _run_many(jobs)


def _run_many(jobs: list[events.EventJob | Problem]) -> flask.Response:
    if not jobs:
        return flask.Response(status=202)
    outcomes, worst = [], None
    for job in jobs:
        if isinstance(job, Problem):
            outcomes.append({"id": job.event_id, "status": "failed", "error": job.as_dict()})
            continue
        try:
            outcomes.append(_run_job(job))
        except Problem as problem:
            outcomes.append({"id": job.event_id, "type": job.event_type, "status": "failed", "error": problem.as_dict()})
            if problem.retryable and (worst is None or problem.status > worst.status):
                worst = problem
    body = json.dumps({"results": outcomes})
    if worst is not None:  # ask for redelivery; what was done is skipped next time (idempotent)
        return flask.Response(body, status=worst.status, mimetype="application/json",
                              headers={"Retry-After": str(worst.retry_after or 1)})
    return flask.Response(body, status=200, mimetype="application/json")


def _event_kind(request: flask.Request) -> str:
    ctype = (request.mimetype or "").lower()
    if ctype == "application/cloudevents-batch+json":
        return "batch"
    if ctype == "application/cloudevents+json" or "ce-specversion" in request.headers:
        return "cloudevent"
    if ctype.startswith("multipart/"):
        return "multipart"
    if ctype in ("application/json", "text/json", "") or ctype.endswith("+json"):
        return "json"
    raise Problem(415, "unsupported-media-type", f"POST / does not accept {ctype or 'a body without a type'}")


def _post(request: flask.Request) -> tuple[flask.Response, str, str]:
    kind = _event_kind(request)
    flask.g.kind = kind
    if kind == "multipart":
        return _multipart(request), kind, ""
    if kind == "batch":
        return _run_batch(request.get_data()), kind, ""
    if kind == "cloudevent":
        event = events.parse_cloudevent(dict(request.headers), request.get_data())
        job = events.from_cloudevent(event)
        return _reply(job, _run_job(job)), kind, job.event_id
    body = _json_body(request)
    if isinstance(body, list):  # Event Grid (CloudEvents schema) posts arrays as application/json
        return _run_batch(request.get_data()), "batch", ""
    if isinstance(body, dict) and "Records" in body:
        return _run_many(events.from_minio(body)), "storage-notification", ""
    if isinstance(body, dict):
        return _json_direct(body, request), kind, ""
    raise Problem(400, "malformed-json", "the JSON body must be an object, a batch array or a notification")


def _options(request: flask.Request) -> flask.Response:
    origin = request.headers.get("WebHook-Request-Origin")
    if origin:
        return flask.Response(status=200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*",
                                                   "Allow": "POST, OPTIONS"})
    return flask.Response(status=204, headers={"Allow": "GET, POST, OPTIONS"})


def _readyz() -> flask.Response:
    WARMUP.ensure_started()
    readiness = WARMUP.readiness
    body = {**readiness.as_dict(), "revision": CONFIG.revision}
    if WARMUP.fuser is not None:
        body["model_version"] = WARMUP.fuser.model_version
    if readiness.ready:
        metrics.READY.set(1)
        metrics.COLD_START.set(readiness.timings_s.get("cold_start", 0))
        metrics.MODEL_LOAD.set(readiness.timings_s.get("model_load", 0))
        return flask.Response(json.dumps(body), status=200, mimetype="application/json")
    return flask.Response(json.dumps(body), status=503, mimetype="application/json", headers={"Retry-After": "2"})


def _route(request: flask.Request) -> tuple[flask.Response, str, str]:
    path, method = request.path.rstrip("/") or "/", request.method
    if path == "/healthz" and method in ("GET", "HEAD"):
        return flask.Response(json.dumps({"status": "ok"}), mimetype="application/json"), "healthz", ""
    if shutdown.DRAINING.is_set():
        raise Problem(503, "shutting-down", "this instance is shutting down; retry", retry_after=1)
    if path == "/readyz" and method in ("GET", "HEAD"):
        return _readyz(), "readyz", ""
    if path == "/" and method == "OPTIONS":
        # The CloudEvents webhook handshake only echoes the origin; Event Grid's validation request
        # carries no delivery headers, so requiring the token here would make subscriptions fail.
        return _options(request), "options", ""
    if path == "/" and method in ("GET", "HEAD") and demo.wants_html(request):  # the demo page (function/demo.py)
        try:
            _check_auth(request)
        except Problem:
            return demo.unlock(), "demo", ""  # 401 whose body is a token form that loads the page
        return demo.page(), "demo", ""
    _check_auth(request)
    if path == "/metrics" and method == "GET":
        return flask.Response(metrics.render(), mimetype="text/plain; version=0.0.4"), "metrics", ""
    if path == "/openapi.json" and method == "GET":
        return flask.Response(json.dumps(SPEC), mimetype="application/json"), "openapi", ""
    if path == "/" and method == "POST":
        return _post(request)
    if path in ("/", "/healthz", "/readyz", "/metrics", "/openapi.json"):
        raise Problem(405, "method-not-allowed", f"{method} is not allowed on {path}")
    raise Problem(404, "not-found", f"no route {path}")


def fuse(request: flask.Request) -> flask.Response:
    """The single functions-framework entry point (HTTP signature)."""
    started = time.perf_counter()
    kind, event_id = "unknown", request.headers.get("ce-id", "")
    error = ""
    try:
        response, kind, event_id = _route(request)
        event_id = event_id or request.headers.get("ce-id", "")
    except Problem as problem:
        kind = flask.g.get("kind", kind)
        error = f"{problem.code}: {problem.detail}"
        root = problem.__cause__
        while root is not None and root.__cause__ is not None:
            root = root.__cause__
        if root is not None:  # the underlying cause, by type only: messages may hold URIs
            error += f" (caused by {type(root).__name__})"
        response = problem.response(instance=request.path)
        if problem.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="facefusion"'
    except Exception as exc:  # never let one request take the worker down; the cause goes to the log
        log.exception("unhandled error")
        error = f"internal-error: {type(exc).__name__}"
        response = Problem(503, "internal-error", "an unexpected error occurred", retry_after=5).response()
    response.headers["X-Revision"] = CONFIG.revision
    if request.path not in PUBLIC_PATHS and request.path != "/metrics":
        _log({"severity": "INFO" if response.status_code < 500 else "ERROR", "revision": CONFIG.revision,
              "method": request.method, "path": request.path, "kind": kind, "event_id": event_id,
              "status": response.status_code, "ms": round((time.perf_counter() - started) * 1000, 1),
              **({"error": error} if error else {}),
              "server_timing": response.headers.get("Server-Timing", "")})
    metrics.REQUESTS.labels(request.path if request.path in ("/", *PUBLIC_PATHS, "/metrics", "/openapi.json") else "other",
                            kind, str(response.status_code)).inc()
    return response
