"""What tracing costs: requests/s of the function (bench/serve.py's request: a 1920x1080 JPEG with one
face, stand-in models, multipart) with tracing off, on with no collector listening, and on with an
OTLP/HTTP receiver in this process. The three servers run side by side and are driven in turns, so
that drift on a shared machine hits them alike; each row is the median of `--rounds`. Besides requests/s,
the workers' CPU time per request (the requests plus one warm-up each per connection).
Run: python -m bench.tracing_overhead [--requests 24] [--rounds 3] [--concurrency 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import (
    cpu_seconds,
    free_port,
    single_face_1080p,
    standin_models,
    start_function,
    stop_process,
    table,
    worker_pids,
)
from bench.serve import SHARED, drive


class Receiver:
    """A minimal OTLP/HTTP endpoint: answers 200 and counts the spans it decodes."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                receiver.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def tracing_cpu_per_request(n: int = 2000) -> float:
    """Microseconds of CPU, in the request thread, of one multipart request's tracing work (the server
    span, storage and eight pipeline-stage spans, attributes, the log fields), in this process with a
    collector that refuses connections: the cost that tracing adds to a fusion, without the noise."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    import logging
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    from function import observe, tracing
    from pipeline import StageTimer

    tracing.setup("bench", "bench")

    class Request:
        method, path, mimetype, content_length = "POST", "/", "multipart/form-data", 1000
        headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

    def one() -> None:
        with tracing.server_span(Request, tracing.Incoming.from_request(Request)):
            with observe.stage("storage_read"):
                pass
            timer = StageTimer(observe.stage_hook())
            for name in ("decode", "detect", "embed", "decode", "detect", "embed", "swap", "paste", "encode"):
                with timer.stage(name):
                    pass
            observe.fused(type("Report", (), {"faces_found": 1, "faces_swapped": 1, "model_version": "m"})())
            observe.observe_request("/", "multipart", 200, 0.1)
            tracing.log_fields()

    for _ in range(200):
        one()
    start = time.thread_time()
    for _ in range(n):
        one()
    return (time.thread_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,2")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    root = standin_models(enhancer=False)
    target = single_face_1080p()
    source = (SHARED / "images" / "obama.jpg").read_bytes()
    receiver = Receiver()
    closed = free_port()  # nothing listens here
    base = {"MODEL_PATH": str(root), "MAX_INFLIGHT": str(max(levels)), "K_REVISION": "bench", "THREADS": "4"}
    configs = {
        "tracing off": {},
        "tracing on, no collector": {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed}"},
        "tracing on, OTLP receiver": {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url},
    }
    env_clean = {k: "" for k in os.environ if k.startswith("OTEL_")}
    servers = {}
    try:
        for name, extra in configs.items():
            proc, url = start_function({**env_clean, **base, **extra})
            servers[name] = (url, proc)
        files = lambda i: {"source": source, "target": target}  # noqa: E731
        results: dict[tuple[int, str], list[float]] = {}
        cpu: dict[tuple[int, str], list[float]] = {}
        for c in levels:
            for _ in range(args.rounds):
                for name, (url, proc) in servers.items():
                    workers = worker_pids(proc.pid)
                    before = cpu_seconds(workers)
                    rps = drive(url, files, c, args.requests)[0]
                    cpu.setdefault((c, name), []).append((cpu_seconds(workers) - before) * 1000 / (args.requests + c))
                    results.setdefault((c, name), []).append(rps)
        rows = []
        for c in levels:
            off = statistics.median(results[(c, "tracing off")])
            off_cpu = statistics.median(cpu[(c, "tracing off")])
            for name in configs:
                rps = statistics.median(results[(c, name)])
                ms = statistics.median(cpu[(c, name)])
                rows.append([c, name, rps, (1 - rps / off) * 100, " ".join(f"{r:.2f}" for r in results[(c, name)]),
                             ms, (ms / off_cpu - 1) * 100])
    finally:
        for _, proc in servers.values():
            stop_process(proc)
    print(f"1920x1080 JPEG, one face, {args.requests} requests x {args.rounds} rounds per row (median), "
          f"stand-in models, {os.cpu_count()} CPUs; spans received: {receiver.spans}")
    print(table(["concurrency", "server", "req/s", "loss %", "rounds req/s", "CPU ms/request", "CPU +%"], rows))
    print(f"tracing work in the request thread: {tracing_cpu_per_request():.0f} us CPU per request")


if __name__ == "__main__":
    main()
