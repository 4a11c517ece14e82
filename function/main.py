"""The functions-framework target `fuse`: routing, authentication and the request log.

    python -m function.serve

Importing this module loads no model. function/serve.py (the one way to serve it) starts the warm-up
before it imports this module (the Runtime adopts that warm-up), listens once the app is built, and
asks `precheck` about each request before reading its body; a fork hook starts the warm-up in a forked worker, and a process that does neither (the Flask
debug server) starts it on its first request. The work itself lives beside this module: direct
fusions in direct.py, event jobs in jobs.py, the process-wide objects in runtime.py.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # functions-framework loads this file by path

import flask  # noqa: E402

from function import demo, direct, events, fanout, jobs, metrics, observe, shutdown  # noqa: E402
from function.front_door import REFUSED, intake_ms, shown  # noqa: E402
from function.openapi import SPEC  # noqa: E402
from function.problems import Problem, as_problem, internal_error  # noqa: E402
from function.reply import Reply, json_response, without_body_type  # noqa: E402
from function.runtime import Runtime  # noqa: E402
from function.video_runner import RUNNER as VIDEO_RUNNER  # noqa: E402

log = logging.getLogger("facefusion.function")
RUNTIME = Runtime.from_env()

os.register_at_fork(after_in_child=RUNTIME.warmup.ensure_started)
os.register_at_fork(after_in_child=lambda: VIDEO_RUNNER.start_scanning(RUNTIME))
VIDEO_RUNNER.start_scanning(RUNTIME)  # without K_SINK: resume unfinished video jobs once ready (video_runner.py)
shutdown.install(lambda: RUNTIME.limiter.active, RUNTIME.config.drain_seconds, RUNTIME.config.drain_max_seconds)


# -- handlers --------------------------------------------------------------------------------------
def _healthz(request: flask.Request) -> Reply:
    return Reply(json_response({"status": "ok"}), "healthz")


def _readyz(request: flask.Request) -> Reply:
    warmup = RUNTIME.warmup
    warmup.ensure_started()
    readiness = warmup.readiness
    # pid: which process answered, with WORKERS > 1 (any of them may take a probe on the shared socket)
    body = {**readiness.as_dict(), "revision": RUNTIME.config.revision, "pid": os.getpid()}
    if warmup.fuser is not None:
        body["model_version"] = warmup.fuser.model_version
    if readiness.ready:  # the gauges are set once, when the process turns ready (observe.py)
        return Reply(json_response(body), "readyz")
    return Reply(json_response(body, 503, {"Retry-After": "2"}), "readyz")


def _metrics(request: flask.Request) -> Reply:
    return Reply(flask.Response(metrics.render(), mimetype="text/plain; version=0.0.4"), "metrics")


def _openapi(request: flask.Request) -> Reply:
    return Reply(json_response(SPEC), "openapi")


def _job_status(request: flask.Request) -> Reply:
    """GET /jobs/<id>: a video job's state, segments and frames done, frames/s, output and any error."""
    job_id = request.path.rstrip("/").rsplit("/", 1)[-1]
    if not RUNTIME.config.video_jobs_uri:  # no store, so no job: the 404 says why (a 503 would be retried)
        raise Problem(404, "job-not-found", f"no video job {job_id[:40]!r}: this service keeps none (set VIDEO_JOBS_URI, "
                                          "or OUTPUT_URI, whose folder holds them by default)")
    return Reply(json_response(fanout.store(RUNTIME).status(job_id)), "job-status")


def _dead_letter(request: flask.Request) -> Reply:
    """POST /dead-letter: the deadLetterSink of the segment Trigger. A segment delivery Eventing gave up
    on fails its job (segment and reason from the knativeerror* extensions) and is answered 202; only a
    malformed dead letter (4xx) or a store that cannot be written (503, retried) is answered otherwise.
    Only this route reads the extensions as a failure: the same event replayed to POST / is processed."""
    flask.g.kind = "dead-letter"
    job = events.from_cloudevent(events.parse_cloudevent(dict(request.headers), request.get_data()))
    flask.g.event_id = job.event_id
    job.dead_letter = job.knative_error or {}
    jobs.run_job(RUNTIME, job)
    return Reply(flask.Response(status=202), "dead-letter", job.event_id)


def _webhook_handshake(request: flask.Request) -> Reply:
    """CloudEvents webhook abuse protection: echo WebHook-Request-Origin as WebHook-Allowed-Origin."""
    origin = request.headers.get("WebHook-Request-Origin")
    if origin:
        return Reply(flask.Response(status=200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*",
                                                         "Allow": "POST, OPTIONS"}), "options")
    return Reply(flask.Response(status=204, headers={"Allow": _allow("/")}), "options")


def _demo_page(request: flask.Request) -> Reply:
    """GET / from a browser: the demo page (function/demo.py). Without a valid token the answer is a
    401 whose body asks for the token and then loads the page with it; other clients get 405."""
    if not demo.wants_html(request):
        _check_auth(request)
        raise Problem(405, "method-not-allowed", f"{request.method} is not allowed on /", headers={"Allow": _allow("/")})
    try:
        _check_auth(request)
    except Problem:
        return Reply(demo.unlock(), "demo")
    return Reply(demo.page(), "demo")


def _json_body(request: flask.Request) -> Any:
    try:
        return json.loads(request.get_data() or b"null")
    except (ValueError, RecursionError) as exc:
        raise Problem(400, "malformed-json", "the body is not valid JSON") from exc


def _post(request: flask.Request) -> Reply:
    """POST / by what the body is: multipart, a CloudEvent (binary, structured, batch), a storage
    notification, or a JSON fusion request."""
    ctype = (request.mimetype or "").lower()
    if ctype == "application/cloudevents-batch+json":
        flask.g.kind = "batch"
        return Reply(jobs.run_many(RUNTIME, events.parse_batch(request.get_data(), RUNTIME.config.max_batch)), "batch")
    if ctype == "application/cloudevents+json" or "ce-specversion" in request.headers:
        flask.g.kind = "cloudevent"
        job = events.from_cloudevent(events.parse_cloudevent(dict(request.headers), request.get_data()))
        flask.g.event_id = job.event_id
        return Reply(jobs.reply(RUNTIME, job, jobs.run_job(RUNTIME, job)), "cloudevent", job.event_id)
    if ctype.startswith("multipart/"):
        flask.g.kind = "multipart"
        return direct.multipart(RUNTIME, request)
    if ctype not in ("application/json", "text/json", "") and not ctype.endswith("+json"):
        raise Problem(415, "unsupported-media-type", f"POST / does not accept {ctype or 'a body without a type'}")
    flask.g.kind = "json"
    body = _json_body(request)
    if isinstance(body, list):  # Event Grid (CloudEvents schema) posts arrays as application/json
        return Reply(jobs.run_many(RUNTIME, events.parse_batch(body, RUNTIME.config.max_batch)), "batch")
    if isinstance(body, dict) and "Records" in body:
        return Reply(jobs.run_many(RUNTIME, events.from_minio(body, RUNTIME.config.max_batch)), "storage-notification")
    if isinstance(body, dict):
        return direct.json_body(RUNTIME, body, request)
    raise Problem(400, "malformed-json", "the JSON body must be an object, a batch array or a notification")


# -- routing ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    handler: Callable[[flask.Request], Reply]
    public: bool = False  # answered without AUTH_TOKEN
    while_draining: bool = False  # answered normally after SIGTERM (liveness must stay green)
    logged: bool = True  # one request-log line each (probes and scrapes would drown the log)


ROUTES: dict[str, dict[str, Route]] = {
    "/healthz": {m: Route(_healthz, public=True, while_draining=True, logged=False) for m in ("GET", "HEAD")},
    "/readyz": {m: Route(_readyz, public=True, logged=False) for m in ("GET", "HEAD")},
    "/metrics": {"GET": Route(_metrics, logged=False)},
    "/openapi.json": {"GET": Route(_openapi)},
    "/jobs/*": {"GET": Route(_job_status)},  # /jobs/<id>: one path segment after /jobs/
    "/dead-letter": {"POST": Route(_dead_letter)},
    "/": {
        "POST": Route(_post),
        # The handshake only echoes the origin; Event Grid's validation request carries no delivery
        # headers, so requiring the token here would make subscriptions fail.
        "OPTIONS": Route(_webhook_handshake, public=True),
        **{m: Route(_demo_page, public=True) for m in ("GET", "HEAD")},  # checks the token itself
    },
}
# probes and scrapes: the routes that log nothing; they get no spans and threads of their own
PROBE_PATHS = frozenset(path for path, methods in ROUTES.items() if not any(r.logged for r in methods.values()))
observe.install(RUNTIME, PROBE_PATHS)  # tracing and cold-start metrics for the process that serves


def _find_route(request: flask.Request) -> tuple[str, Route]:
    """The route of a request; 404 or 405 otherwise, but only after the token check (unless the path
    is public), so that callers without a token learn nothing about what exists."""
    path = _route_key(request.path.rstrip("/") or "/")
    methods = ROUTES.get(path, {})
    route = methods.get(request.method)
    if route is None:
        if not methods or not all(r.public for r in methods.values()):
            _check_auth(request)
        if not methods:
            raise Problem(404, "not-found", f"no route {path}")
        raise Problem(405, "method-not-allowed", f"{request.method} is not allowed on {path}",
                      headers={"Allow": _allow(path)})
    return path, route


def _route_key(path: str) -> str:
    """The ROUTES key of a path: itself, or `<prefix>/*` for one segment under a prefix route."""
    if path in ROUTES:
        return path
    head, _, last = path.rpartition("/")
    return f"{head}/*" if last and head and f"{head}/*" in ROUTES else path


def _allow(path: str) -> str:
    return ", ".join(sorted(ROUTES[path]))


ADMITTED = "facefusion.admitted"  # environ key: (path, route) of a request precheck let in


def _admit(request: flask.Request) -> tuple[str, Route]:
    """The route of a request whose token (where its route needs one) is valid; else the problem."""
    path, route = _find_route(request)
    if not route.public:
        _check_auth(request)
    return path, route


def precheck(environ: dict[str, Any]) -> Problem | None:
    """The answer a request gets from its route and token alone (function/front_door.py asks before
    reading the body); None when it may go on, with its route kept for `fuse`, which then need not
    look it up and check the token a second time."""
    try:
        environ[ADMITTED] = _admit(flask.Request(environ))
    except Problem as problem:
        return problem
    return None


def _check_auth(request: flask.Request) -> None:
    token = RUNTIME.config.auth_token
    if not token:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Problem(401, "unauthorized", "a valid 'Authorization: Bearer' token is required")


_log_lock = threading.Lock()


def _log(entry: dict[str, Any]) -> None:
    """One JSON line per request on stdout; the lock keeps lines from concurrent threads whole."""
    line = json.dumps({**entry, **observe.log_fields()}, separators=(",", ":"), default=str) + "\n"
    with _log_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def _cause(problem: Problem) -> str:
    """The underlying cause of a problem, by type only: messages may hold URIs."""
    root = problem.__cause__
    while root is not None and root.__cause__ is not None:
        root = root.__cause__
    return f" (caused by {type(root).__name__})" if root is not None else ""


def _severity(status: int, route: Route | None) -> str:
    """A request's log level: ERROR for work that failed on our side, but a probe's 503 is what a process
    says while it starts or drains (INFO), or once its warm-up failed, which the warm-up's own line already
    logged as ERROR (WARNING): alerts on ERROR then count failures, not every poll of a starting pod."""
    if status < 500:
        return "INFO"
    if status != 503 or route is None or route.logged:
        return "ERROR"
    return "WARNING" if RUNTIME.warmup.readiness.state == "failed" else "INFO"


@observe.entry  # the request's server span (docs/observability.md)
def fuse(request: flask.Request) -> flask.Response:
    """The single functions-framework entry point (HTTP signature)."""
    started = time.perf_counter()
    path, route, error = "other", None, ""
    try:
        if REFUSED in request.environ:  # the front door's answer, given without reading the body
            raise request.environ[REFUSED]
        # admitted by the front door before the body was read, or (another server) here
        path, route = request.environ.get(ADMITTED) or _admit(request)
        if shutdown.DRAINING.is_set() and not route.while_draining:
            raise Problem(503, "shutting-down", "this instance is shutting down; retry", retry_after=1)
        reply = route.handler(request)
    except Exception as exc:  # the one boundary: problems and pipeline failures become problem documents
        problem = as_problem(exc)
        observe.record_error(exc, problem)
        if problem is None:  # never let one request take the worker down; the cause goes to the log
            log.exception("unhandled error")
            problem = internal_error()
            error = f"internal-error: {type(exc).__name__}"
        else:
            error = f"{problem.code}: {problem.detail}{_cause(problem)}"
        reply = Reply(problem.response(instance=shown(request.path)), flask.g.get("kind", "unknown"), flask.g.get("event_id", ""))
    response = without_body_type(reply.response)
    response.headers["X-Revision"] = RUNTIME.config.revision
    if route is None or route.logged or response.status_code >= 400:
        _log({"severity": _severity(response.status_code, route), "revision": RUNTIME.config.revision,
              "method": request.method, "path": shown(request.path), "kind": reply.kind,
              "event_id": reply.event_id or request.headers.get("ce-id", ""), "status": response.status_code,
              "ms": round((time.perf_counter() - started) * 1000, 1), **intake_ms(request.environ),
              **({"error": error} if error else {}), "server_timing": response.headers.get("Server-Timing", "")})
    observe.observe_request(path, reply.kind, response.status_code, time.perf_counter() - started)
    return response
