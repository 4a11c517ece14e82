"""The front door: what every request meets before the function reads a byte of its body.

function/serve.py runs the functions-framework Flask app behind uvicorn (asyncio, h11) through this
module: `FrontDoor` is the ASGI application and `Protocol` uvicorn's HTTP protocol. Slow clients cost
a socket and a few kilobytes on the event loop, never a thread; the WSGI app runs in a thread pool only
once a request is complete, so `/healthz` answers while any number of clients trickle headers or
bodies. Before the body is read:

- request target longer than MAX_REQUEST_LINE -> 414, more than MAX_HEADERS header fields -> 431
  (the whole header block is bounded by MAX_HEADER_BYTES in h11: over it, 400);
- the route and the token (main.precheck): 401 / 404 / 405 without reading the body;
- a Content-Length over MAX_REQUEST_BYTES -> 413 (multipart bodies, which may carry a video upload:
  over MAX_REQUEST_BYTES + MAX_VIDEO_BYTES).

Such refusals are answered by the function itself (the same problem document, log line and metric
as any other answer) with `Connection: close`, and the connection is closed without the body being
read (`Expect: 100-continue` is granted only to requests that passed). A chunked body is counted as it
streams and cut at MAX_REQUEST_BYTES with 413. The body goes to a spooled temporary file (in memory up
to 1 MiB), so the event loop holds no more than that per upload. Headers must be complete within
HEADER_TIMEOUT_S of a request's first byte (or of the connection), and a body may pause at most
BODY_TIMEOUT_S between pieces (408).

An answer that carries Server-Timing (a fusion's stages) gets the front door's part of the latency in
front of them: `receive` (from the request head to the body's last byte: the upload), `queue` (waiting
for a request thread) and `handler` (the app's time that no stage of its own names: Flask, the form's
parsing, options, building the answer). The entries do not overlap, so their sum is the server's time
and what a client measures beyond it is the network, the client and the event loop's own part; where
the app's stages ran side by side (a new source on a GPU, a video), `handler` is less than the truth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from function.config import FunctionConfig
from function.problems import Problem

log = logging.getLogger("facefusion.front_door")

REFUSED = "facefusion.refused"  # environ key: the Problem the function answers with, body unread
DISCONNECTED = "facefusion.disconnected"  # environ key: a threading.Event set when the client goes away
SPOOL_BYTES = 1 << 20
SHOWN_CHARS = 256  # how much of a request path ever reaches an answer or the log
_RECEIVED = "facefusion.received"  # environ key: perf_counter() at the request head and at its body's end
_INTAKE = "facefusion.intake"  # environ key: the request's receive and queue ms, once a request thread has it
CLOSE_HEADER = (b"connection", b"close")  # as uvicorn spells it: in a request's headers, it closes after the answer


def shown(text: str) -> str:
    """A request-supplied string as it may appear in an answer or a log line: bounded."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def build_environ(scope: dict[str, Any]) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP scope, without a body yet (PEP 3333 strings are latin-1)."""
    path = scope["path"].encode("utf-8").decode("latin-1")
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"], "SCRIPT_NAME": "", "PATH_INFO": path,
        "QUERY_STRING": scope["query_string"].decode("latin-1"), "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "SERVER_NAME": server[0], "SERVER_PORT": str(server[1]), "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = scope["client"][0], str(scope["client"][1])
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        key = name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + name
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class _Refusal(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


class FrontDoor:
    """The ASGI application: early checks, bounded body intake, then the WSGI app in a thread."""

    def __init__(self, wsgi_app: Callable, limits: FunctionConfig, precheck: Callable[[dict[str, Any]], Problem | None],
                 probe_paths: frozenset[str]) -> None:
        self.app = wsgi_app
        self.limits = limits
        self.precheck = precheck
        self.probe_paths = probe_paths  # the function's unlogged routes (/healthz, /readyz, /metrics)
        self.pool = concurrent.futures.ThreadPoolExecutor(limits.threads, thread_name_prefix="request")
        # probes never queue behind work: liveness and readiness answer while every request thread is busy
        self.probe_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="probe")

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        head_at = time.perf_counter()
        environ = build_environ(scope)
        body = None
        try:
            declared = self._check_headers(scope, environ)
            body = await self._read_body(receive, declared, environ)
        except _Refusal as refusal:
            environ[REFUSED] = refusal.problem
        close = REFUSED in environ
        if body is None:  # refused: the function answers without a body, and the connection closes
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["CONTENT_LENGTH"] = "0"
            body = io.BytesIO()
        environ["wsgi.input"] = body
        environ[_RECEIVED] = (head_at, time.perf_counter())
        gone = environ[DISCONNECTED] = threading.Event()
        watcher = asyncio.ensure_future(self._watch_disconnect(receive, gone)) if not close else None
        await asyncio.sleep(0)  # let the watcher see a close that arrived with the request
        pool = self.probe_pool if (environ["PATH_INFO"].rstrip("/") or "/") in self.probe_paths else self.pool
        try:
            status, headers, chunks = await asyncio.get_running_loop().run_in_executor(pool, self._call_app, environ)
        finally:
            body.close()
            if watcher is not None:
                watcher.cancel()
        if close:
            headers = [(k, v) for k, v in headers if k.lower() != b"connection"] + [(b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": False})

    @staticmethod
    async def _watch_disconnect(receive: Callable, gone: threading.Event) -> None:
        """After the body, the next ASGI message can only be the client's disconnect: flag it for the
        function (direct.client_gone), which drops a fusion nobody waits for."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    def _check_headers(self, scope: dict[str, Any], environ: dict[str, Any]) -> int | None:
        """Everything decided from the request line and headers; the declared body length (None: chunked)."""
        limits = self.limits
        target = len(scope["raw_path"]) + len(scope["query_string"]) + 1
        if target > limits.max_request_line:
            raise _Refusal(Problem(414, "uri-too-long", f"the request target exceeds {limits.max_request_line} bytes"))
        if len(scope["headers"]) > limits.max_headers:
            raise _Refusal(Problem(431, "too-many-headers", f"more than {limits.max_headers} header fields"))
        problem = self.precheck(environ)
        if problem is not None:
            raise _Refusal(problem)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked:
            return None
        try:
            declared = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:  # h11 has already refused malformed lengths; belt and braces
            raise _Refusal(Problem(400, "bad-request", "malformed Content-Length")) from None
        if declared > body_limit(limits, environ):
            raise _Refusal(_too_large(body_limit(limits, environ)))
        return declared

    async def _read_body(self, receive: Callable, declared: int | None, environ: dict[str, Any]):
        """The body into a spooled file, counted as it streams; refused past the limit or a stall."""
        body = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115 - closed by the caller
        size = 0
        try:
            if declared == 0:
                return body
            while True:
                try:
                    message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
                except asyncio.TimeoutError:
                    raise _Refusal(Problem(408, "request-timeout",
                                           f"no part of the body arrived for {self.limits.body_timeout_s:g} s")) from None
                if message["type"] == "http.disconnect":
                    raise _Refusal(Problem(400, "client-disconnected", "the client went away during the body"))
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > body_limit(self.limits, environ):
                    raise _Refusal(_too_large(body_limit(self.limits, environ)))
                body.write(chunk)
                if not message.get("more_body", False):
                    break
        except BaseException:
            body.close()
            raise
        body.seek(0)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["CONTENT_LENGTH"] = str(size)
        return body

    def _call_app(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], list[bytes]]:
        app_at = time.perf_counter()
        head_at, body_at = environ[_RECEIVED]
        intake = environ[_INTAKE] = {"receive": (body_at - head_at) * 1000, "queue": (app_at - body_at) * 1000}
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            started["status"], started["headers"] = status, headers
            return lambda data: chunks.append(data)

        chunks: list[bytes] = []
        result: Iterable[bytes] = self.app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        app_ms = (time.perf_counter() - app_at) * 1000
        headers = [(k.lower().encode("latin-1"),
                    with_front_door(v, intake, app_ms) if k.lower() == "server-timing" else v.encode("latin-1"))
                   for k, v in started["headers"]]
        return int(started["status"].split(" ", 1)[0]), headers, chunks


def intake_ms(environ: dict[str, Any]) -> dict[str, float]:
    """`receive_ms` and `queue_ms` of a request the front door took in, for the request's log line (which
    the app writes before the front door knows `handler`); empty for one it did not (a test client)."""
    intake = environ.get(_INTAKE, {})
    return {f"{name}_ms": round(ms, 1) for name, ms in intake.items()}


def with_front_door(server_timing: str, intake: dict[str, float], app_ms: float) -> bytes:
    """The app's Server-Timing with `receive`, `queue` and `handler` in front (module docstring): `handler` is
    the app's time less the stages it reported itself, so that no two entries count the same time."""
    stages_ms = 0.0
    for entry in server_timing.split(","):
        _, _, duration = entry.partition(";dur=")
        with contextlib.suppress(ValueError):
            stages_ms += float(duration.split(";", 1)[0])
    front = ", ".join(f"{name};dur={ms:.1f}" for name, ms in {**intake, "handler": max(0.0, app_ms - stages_ms)}.items())
    return (f"{front}, {server_timing}" if server_timing else front).encode("latin-1")


def body_limit(limits: FunctionConfig, environ: dict[str, Any]) -> int:
    """MAX_REQUEST_BYTES; for multipart (a video `target` may be in it) MAX_REQUEST_BYTES + MAX_VIDEO_BYTES.
    The body is spooled to a temporary file beyond 1 MiB, so the larger limit costs disk, not memory."""
    if environ.get("CONTENT_TYPE", "").lower().startswith("multipart/"):
        return limits.max_multipart_bytes
    return limits.max_request_bytes


def _too_large(limit: int) -> Problem:
    return Problem(413, "request-too-large", f"the request body exceeds its limit ({limit} bytes: MAX_REQUEST_BYTES, "
                                             "plus MAX_VIDEO_BYTES for multipart)")


class _LingeringTransport:
    """The connection's transport as uvicorn's protocol sees it: `close()` while the client is still
    sending a body (a refused request) shuts the socket down for writing, drops what still arrives for
    up to LINGER_S and only then closes. A close with unread data would reset the connection, and the
    client would see the reset instead of the answer."""

    LINGER_S = 2.0

    def __init__(self, transport, protocol: Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def close(self) -> None:
        protocol, transport = self._protocol, self._transport
        if protocol.discarding or transport.is_closing():
            return
        if protocol.conn.their_state not in (h11.SEND_BODY, h11.ERROR):  # ERROR: a malformed or oversized head
            transport.close()
            return
        protocol.discarding = True
        with contextlib.suppress(OSError, RuntimeError):
            if transport.can_write_eof():
                transport.write_eof()
        transport.resume_reading()
        protocol.loop.call_later(self.LINGER_S, transport.close)


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits it lacks: a connection must complete its request
    headers within HEADER_TIMEOUT_S of connecting or of a request's first byte, at most
    MAX_CONNECTIONS are open at once, a connection is closed after MAX_CONNECTION_REQUESTS answers,
    and refused uploads end with a lingering close (above)."""

    limits = FunctionConfig()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.discarding = False
        self.requests_begun = 0
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self.transport = _LingeringTransport(transport, self)  # type: ignore[assignment]
        if len(self.connections) > self.limits.max_connections:
            transport.abort()
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.abort()  # headers still incomplete: nothing to answer, nothing to keep

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_timer()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:  # a request began (its app runs after this)
            self.requests_begun += 1
            cap = self.limits.max_connection_requests
            if cap and self.requests_begun >= cap and CLOSE_HEADER not in self.headers:
                # the last on this connection: uvicorn then answers with `Connection: close` and closes
                # after the answer, so the client opens a new connection (to whichever worker accepts
                # it) instead of racing a close it was not told about
                self.headers.append(CLOSE_HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)
