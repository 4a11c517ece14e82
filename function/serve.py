"""The one way to serve the function: `python -m function.serve [--host H] [--port N]`.

functions-framework builds the Flask app (target `fuse` in function/main.py, as before); uvicorn
serves it through function/front_door.py, which checks every request before its body is read and
runs the app in a thread pool only once a request is complete. The README's run command, the
Containerfile's ENTRYPOINT, tests/server.py and bench/common.py all start this module.

One process serves by default (Knative scales by pods). It starts the warm-up first, before it
imports the app (warmup.prestart: loading the models, native work, overlaps the web stack's imports),
and listens once the app is built, so `/readyz` answers 503 until the models are loaded; no fork happens
after the app is imported, so inference sessions (CUDA) are created in the serving process only. WORKERS=N (N > 1) runs N such
processes instead, each started fresh (`python -m function.serve --listen-fd`, no fork of a process
that imported anything) on one listening socket that this process binds and keeps; a worker that dies
is started again, and SIGTERM is passed on to all of them. The first worker starts alone and answers
probes (503 with its status) from the moment its app is built; the others start once it has a verdict
(ready, or failed with a reason) and take no connection before their own, so the pod turns ready as
soon as one process alone would (eight starting together slowed each other: 3.2 against 1.8 s on the
H200) and no request waits on a sibling that is still loading.

SIGTERM: the drain of function/shutdown.py (503 for new work, in-flight fusions finish), then the
server stops, waits up to GRACE_S for the answers still being written, and the process exits 0. A
SIGTERM that comes before the server runs (while the app is imported and built) ends the process at
once, also with 0: nothing was accepted yet.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from function.config import FunctionConfig

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "function" / "main.py"
TARGET = "fuse"
GRACE_S = 5  # after the drain: how long answers still being sent may take before the process exits
log = logging.getLogger("facefusion.serve")


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket, made as asyncio would make it. Its protocol must say TCP: asyncio turns
    Nagle's algorithm off (TCP_NODELAY) only on connections accepted from such a socket, and with it on,
    a response whose head and body leave in two writes waits for the client's delayed ACK, 40 ms on
    every keep-alive request (Knative's queue-proxy keeps its connections alive)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def build_app():
    """The ASGI app that is served: the front door around functions-framework's Flask app."""
    import functions_framework

    from function.front_door import FrontDoor, Protocol
    from function.uploads import FormRequest

    flask_app = functions_framework.create_app(target=TARGET, source=str(SOURCE))
    flask_app.request_class = FormRequest  # small uploads' parts in memory, not on disk (function/uploads.py)
    # functions-framework answers /robots.txt and /favicon.ico, and Flask /static/..., with HTML 404s of
    # their own that no log line or metric saw; every path goes to the function, which routes all (main.py)
    run = flask_app.view_functions["run"]
    for endpoint in ("error", "static"):
        flask_app.view_functions[endpoint] = lambda run=run, **_: run(path="")
    module = sys.modules["main"]  # the module functions-framework loaded from SOURCE
    # the settings the function itself read (a bad value is its default here and fails /readyz)
    limits = module.RUNTIME.config
    Protocol.limits = limits
    return FrontDoor(flask_app, limits, module.precheck, module.PROBE_PATHS), module, limits


def serve(sock: socket.socket, config: FunctionConfig, verdict_fd: int | None = None,
          accept_after_verdict: bool = False) -> None:
    """Serve on a bound socket until SIGTERM has drained the process; never returns.

    A worker of a WORKERS set: `verdict_fd` is a pipe to its supervisor, written and closed once the warm-up
    has a verdict (ready or failed); with `accept_after_verdict` the process takes no connection before
    that (it starts while a sibling serves)."""
    from pipeline import cuda_context

    cuda_context.start_early()  # first: the GPU's context is made beside every import that follows
    from function import shutdown

    # SIGTERM before the server runs (a pod, or a worker set, stopped while this process builds the app):
    # nothing was accepted, nothing to drain; leave with 0 as after a drain, not dead by the signal (-15,
    # which a supervisor reports as a failure). The server's own handler (below) takes over once it runs.
    signal.signal(signal.SIGTERM, lambda signum, frame: shutdown.exit_now(0))
    signal.signal(signal.SIGINT, lambda signum, frame: shutdown.exit_now(0))  # Ctrl+C: the same, no traceback
    from warmup import Warmup, prestart

    prestart(Warmup(problems=config.problems))  # the app built below adopts it (function/runtime.py)
    import uvicorn

    from function.front_door import Protocol

    app, module, limits = build_app()
    module.RUNTIME.warmup.ensure_started()  # the prestarted warm-up (a no-op); /readyz turns 200 when loaded
    module.RUNTIME.warmup.app_built()  # loading began before the imports (load_start < app_built)
    verdict = module.RUNTIME.warmup.readiness.ready_event  # set once ready, or failed (with its reason)
    if verdict_fd is not None:
        threading.Thread(target=_tell_verdict, args=(verdict, verdict_fd), name="verdict", daemon=True).start()
    while accept_after_verdict and not verdict.wait(0.5):  # timed: SIGTERM meanwhile leaves at once
        pass
    from function import observe

    observe.start_watch()  # the cold-start span and metrics follow this warm-up
    config = uvicorn.Config(app, http=Protocol, lifespan="off", interface="asgi3", access_log=False,
                            log_level=limits.log_level, server_header=False,
                            timeout_keep_alive=limits.keepalive_s, h11_max_incomplete_event_size=limits.max_header_bytes,
                            timeout_graceful_shutdown=GRACE_S)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            def terminate(signum, frame):
                shutdown.begin(lambda: setattr(self, "should_exit", True))

            def interrupt(signum, frame):  # Ctrl+C: a second one stops at once
                if not shutdown.begin(lambda: setattr(self, "should_exit", True)):
                    self.force_exit = True
                    self.should_exit = True

            signal.signal(signal.SIGTERM, terminate)
            signal.signal(signal.SIGINT, interrupt)
            yield

    status = 0
    try:
        Server(config).run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits on a startup failure
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("the server failed")
        status = 1
    shutdown._leave_quietly(status)


def _tell_verdict(verdict: threading.Event, fd: int) -> None:
    """Write one byte to the supervisor's pipe once the warm-up has a verdict (function/serve.py, supervise)."""
    verdict.wait()
    with contextlib.suppress(OSError):  # the supervisor may be gone, or no longer listening
        os.write(fd, b"1")
    os.close(fd)


def resolve_cpu_share(workers: int) -> None:
    """CPU_THREADS=share with WORKERS > 1: each serving process's share of the usable CPUs (at least 1),
    written into the environment the workers inherit. Left to their defaults, the pools of every worker
    (OpenCV's, each session's intra-op pool, the helper threads) size themselves to the whole machine:
    eight workers on 16 CPUs run eight 16-thread OpenCV pools. One process alone keeps the defaults."""
    from pipeline.config import EnvReader, cpu_threads_shared, usable_cpus

    if workers > 1 and cpu_threads_shared(EnvReader()):
        os.environ["CPU_THREADS"] = str(max(1, usable_cpus() // workers))


def supervise(sock: socket.socket, workers: int) -> int:
    """WORKERS > 1: run that many fresh serving processes on `sock`; restart any that dies; pass
    SIGTERM and SIGINT on; exit 0 once all have left after a signal. The workers share one folder of
    metric files (PROMETHEUS_MULTIPROC_DIR, function/metrics.py), so any worker's /metrics speaks for all."""
    cmd = [sys.executable, "-m", "function.serve", "--listen-fd", str(sock.fileno())]
    metrics_dir = tempfile.mkdtemp(prefix="facefusion-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    try:
        return _supervise(sock, workers, cmd, env, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(sock: socket.socket, workers: int, cmd: list[str], env: dict[str, str], metrics_dir: str) -> int:
    stopping = threading.Event()
    procs: dict[int, subprocess.Popen] = {}
    # The first worker starts alone and tells its verdict through a pipe (or closes it by dying); the others
    # start then. A start while a sibling runs (the rest of the set, a restart) accepts no connection before
    # its own verdict; a start with no sibling alive serves at once, as the first did.
    verdict: list[int] = []  # the read end of the pipe of the worker whose verdict the others wait for
    waiting = list(range(1, workers))  # the slots started once the first worker has its verdict

    def start(slot: int) -> None:
        # same process group: a SIGKILL of the group (or a container's end) takes the workers along
        if any(proc.poll() is None for other, proc in procs.items() if other != slot):
            extra, fds = ["--accept-after-verdict"], (sock.fileno(),)  # a sibling serves meanwhile
        else:  # alone: it answers probes (503 with its status) while it loads; the waiting slots follow it
            extra, fds = [], (sock.fileno(),)
            if waiting:
                read_end, write_end = os.pipe()
                for old in verdict:
                    os.close(old)
                verdict[:] = [read_end]
                extra, fds = ["--verdict-fd", str(write_end)], (sock.fileno(), write_end)
        try:
            procs[slot] = subprocess.Popen(cmd + extra, pass_fds=fds, env=env)
        finally:
            if len(fds) > 1:
                os.close(fds[1])  # the worker holds the only write end: its exit reads as end of file
        if stopping.is_set():  # a signal arrived while it was being started: it must leave too
            with contextlib.suppress(ProcessLookupError):
                procs[slot].send_signal(signal.SIGTERM)

    def forward(signum, frame) -> None:
        stopping.set()
        if signum == signal.SIGINT:  # a terminal's Ctrl+C already reached the whole process group
            return
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    start(0)
    # needed only once a worker has left; imported after the first worker starts, not before (~30 ms)
    from prometheus_client import multiprocess

    statuses: dict[int, int] = {}
    restarts: dict[int, list[float]] = {slot: [] for slot in range(workers)}
    while len(statuses) < workers:
        if waiting and stopping.is_set():  # never started: nothing to stop
            statuses.update((slot, 0) for slot in waiting)
            waiting.clear()
        if waiting and verdict:
            if select.select(verdict, [], [], 0.2)[0]:
                told = os.read(verdict[0], 1)  # b"": it left before its verdict; its restart will tell instead
                os.close(verdict.pop())
                if told:
                    for slot in waiting:
                        start(slot)
                    waiting.clear()
        else:
            time.sleep(0.2)
        for slot, proc in list(procs.items()):
            if slot in statuses or proc.poll() is None:
                continue
            multiprocess.mark_process_dead(proc.pid, metrics_dir)  # its live gauges no longer count
            if stopping.is_set():  # a worker the signal ended before Python could handle it left as asked
                statuses[slot] = 0 if proc.returncode == -signal.SIGTERM else proc.returncode
                continue
            # back off a worker that keeps dying: 1 s, doubling with each death in the last minute, at most 30 s
            now = time.monotonic()
            recent = restarts[slot] = [t for t in restarts[slot] if now - t < 60] + [now]
            delay = min(2 ** (len(recent) - 1), 30)
            log.error("worker %d exited with %s; starting it again in %d s", slot, proc.returncode, delay)
            if not stopping.wait(delay):
                start(slot)
            else:
                statuses[slot] = proc.returncode
    sock.close()
    return max((abs(s) for s in statuses.values()), default=0)


def main(argv: list[str] | None = None) -> None:
    from function.config import FunctionConfig

    config = FunctionConfig.from_env()
    port, workers = config.port, config.workers
    parser = argparse.ArgumentParser(prog="python -m function.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=port, help="port (default $PORT, else 8080)")
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker of a WORKERS > 1 set
    parser.add_argument("--verdict-fd", type=int, help=argparse.SUPPRESS)  # the first worker: tell the verdict
    parser.add_argument("--accept-after-verdict", action="store_true", help=argparse.SUPPRESS)  # the others
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    resolve_cpu_share(workers)  # a worker (--listen-fd) finds it resolved by its supervisor
    if args.listen_fd is not None:
        serve(socket.socket(fileno=args.listen_fd), config, args.verdict_fd, args.accept_after_verdict)
    sock = bind(args.host, args.port)
    if workers > 1:
        sys.exit(supervise(sock, workers))
    serve(sock, config)


if __name__ == "__main__":
    main()
