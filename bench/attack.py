"""The front door under attack: oversized bodies, slow clients and unbounded request lines, against
the set-up that serves the function (`python -m function.serve`) and, in the same run, the old one
(plain `functions-framework`: gunicorn's threaded worker with its defaults).

For each set-up, on 127.0.0.1 only, with bounded counts and times:
- peak RSS growth of the serving process while it is sent a 1 GiB body without a token, a 1 GiB body
  with the token, and four 200 MB bodies at once with the token (a fresh server for each);
- `/healthz` latency (a new connection each time, as a kubelet probes) and the latency of a normal
  fusion while N connections trickle headers or bodies (half each; closed ones are reopened);
- the status each item of the issue gets (a 16 MB request line, Expect: 100-continue without a
  token, a chunked body past the limit, a 401 on /metrics in the log, ...).

Run: python -m bench.attack [--setups old,old-64t,new] [--slow 10,50,200] [--seconds 60] [--body-mb 1024]
tests/test_front_door.py runs a reduced form (small numbers, no timing thresholds).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.common import (
    REPO,
    SHARED,
    free_port,
    function_command,
    memory,
    old_function_command,
    standin_models,
    stop_process,
    table,
    worker_pids,
)

TOKEN = "attack-token"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
# name -> (command, extra environment); "old-64t" is the old set-up with 64 gunicorn threads (THREADS)
SETUPS = {"old": (old_function_command, {}), "old-64t": (old_function_command, {"THREADS": "64"}),
          "new": (function_command, {})}


class Server:
    def __init__(self, setup: str, models: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"ff-attack-{setup}-"))
        self.log_path = self.root / "server.log"
        env = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "MAX_INFLIGHT", "MAX_REQUEST_BYTES")}
        env.update(MODEL_PATH=str(models), CACHE_PATH=str(self.root / "cache"), AUTH_TOKEN=TOKEN, PORT=str(self.port),
                   PYTHONUNBUFFERED="1", DRAIN_SECONDS="0", **SETUPS[setup][1], **(extra_env or {}))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(SETUPS[setup][0](self.port), cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{setup} exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            status, _, _ = request(self.port, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2)
            if status == 200:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"{setup} not ready")
        self.pid = worker_pids(self.proc.pid)[0]

    def rss_mb(self) -> float:
        try:
            return memory(self.pid)["rss"]
        except OSError:
            return 0.0

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"unparsed_length": len(line)})
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None and request(self.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 5)[0] == 200

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def _read_status(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Read one response (status, headers, up to 64 kB of body); status 0 when none came."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < 1 << 16:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/"):
            return 0, {}, b""
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if status == 100:  # an interim answer: the final one follows (or never does)
            rest = body
            sock.settimeout(timeout)
            try:
                while b"\r\n\r\n" not in rest:
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    rest += piece
            except OSError:
                return 0, {"interim": "100"}, b""
            final_head, _, body = rest.partition(b"\r\n\r\n")
            headers = {"interim": "100", **{k.strip().lower(): v.strip() for k, _, v in
                                            (x.partition(":") for x in final_head.decode("latin-1").split("\r\n")[1:])}}
            status = int(final_head.split()[1]) if final_head.startswith(b"HTTP/") else 0
        length = int(headers.get("content-length", "0") or 0)
        while len(body) < min(length, 1 << 16):
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
        return status, headers, body
    except (OSError, ValueError, IndexError):
        return 0, {}, b""


def request(port: int, head: str | bytes, timeout: float = 10, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            with contextlib.suppress(OSError):  # the server may answer and close before all is sent
                sock.sendall((head.encode("latin-1") if isinstance(head, str) else head) + body)
            return _read_status(sock, timeout)
    except OSError:
        return 0, {}, b""


def send_body(port: int, total: int, auth: bool, seconds: float = 60, chunked: bool = False) -> dict:
    """POST a `total`-byte body as fast as the server takes it; stop early when it answers or closes."""
    head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + (AUTH if auth else "")
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    piece = b"0" * (1 << 20)
    sent, started, finished = 0, time.perf_counter(), False
    result = {"status": 0, "connection": ""}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head.encode())
            pending = memoryview(b"")
            while time.perf_counter() - started < seconds:
                if not pending:
                    if sent >= total:
                        if chunked and not finished:
                            pending, finished = memoryview(b"0\r\n\r\n"), True
                        else:
                            break
                    else:
                        n = min(len(piece), total - sent)
                        sent += n
                        pending = memoryview(f"{n:x}\r\n".encode() + piece[:n] + b"\r\n" if chunked else piece[:n])
                readable, writable, _ = select.select([sock], [sock], [], 1)
                if readable:  # an answer (or a close) before the whole body: stop sending
                    break
                if writable:
                    try:
                        pending = pending[sock.send(pending):]
                    except OSError:
                        break
            status, headers, _ = _read_status(sock, 30)
            result.update(status=status, connection=headers.get("connection", ""))
    except OSError as exc:
        result["error"] = type(exc).__name__
    result.update(sent_mb=round(sent / 2**20, 1), seconds=round(time.perf_counter() - started, 2))
    return result


def peak_growth(server: Server, attack) -> tuple[float, list]:
    """Run `attack()` while sampling the serving process's RSS; (peak - before) in MB, its results."""
    before, peak, done = server.rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.rss_mb())
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        results = attack()
    finally:
        time.sleep(0.3)
        done.set()
        t.join()
    return round(max(peak[0] - before, 0.0), 1), results


def memory_rows(setup: str, models: Path, body_mb: int, parallel_mb: int) -> list[list]:
    rows = []
    cases = [(f"{body_mb} MB, no token", lambda port: [send_body(port, body_mb << 20, auth=False)]),
             (f"{body_mb} MB, token", lambda port: [send_body(port, body_mb << 20, auth=True)]),
             (f"4 x {parallel_mb} MB, token", lambda port: _parallel(port, parallel_mb)),
             (f"{body_mb} MB chunked, token", lambda port: [send_body(port, body_mb << 20, auth=True, chunked=True)])]
    for name, attack in cases:
        server = Server(setup, models)
        try:
            growth, results = peak_growth(server, lambda a=attack, s=server: a(s.port))
            rows.append([setup, name, growth, ",".join(str(r["status"]) for r in results),
                         ",".join(r.get("connection") or "-" for r in results), max(r["seconds"] for r in results),
                         "yes" if server.alive() else "NO"])
        finally:
            server.stop()
    return rows


def _parallel(port: int, mb: int) -> list[dict]:
    out: list[dict] = [{}] * 4
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, send_body(port, mb << 20, auth=True))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


class Trickle:
    """N connections that each send one byte per `interval` seconds: half of them a request's headers,
    half a body (complete headers with the token and a 1 MB Content-Length). A connection that the
    server closes is opened again, at most `n` reopenings per second."""

    def __init__(self, port: int, n: int, interval: float = 1.0) -> None:
        self.port, self.n, self.interval = port, n, interval
        self.stop = threading.Event()
        self.reopened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int):
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.setblocking(False)
        except OSError:
            return None, b""
        if i % 2:
            head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + AUTH.encode()
            head += b"Content-Length: 1000000\r\n\r\n"
            with contextlib.suppress(OSError):
                sock.send(head)
            return sock, b"0" * 1000000
        return sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %d\r\n" % (k, k) for k in range(10000))

    def _run(self) -> None:
        conns = [self._open(i) for i in range(self.n)]
        pos = [0] * self.n
        while not self.stop.wait(self.interval):
            budget = self.n
            for i, (sock, payload) in enumerate(conns):
                alive = sock is not None
                if alive:
                    try:
                        if sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                            alive = False
                    except BlockingIOError:
                        pass
                    except OSError:
                        alive = False
                if alive:
                    try:
                        sock.send(payload[pos[i]:pos[i] + 1])
                        pos[i] += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        alive = False
                if not alive and budget > 0:
                    if sock is not None:
                        sock.close()
                    budget -= 1
                    self.reopened += 1
                    conns[i], pos[i] = self._open(i), 0
        for sock, _ in conns:
            if sock is not None:
                sock.close()

    def __enter__(self) -> Trickle:
        self.thread.start()
        time.sleep(min(2.0, self.interval * 2))
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _healthz_ms(port: int, timeout: float = 5) -> float | None:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return (time.perf_counter() - start) * 1000 if ok else None


def _fusion_ms(port: int, source: bytes, target: bytes, timeout: float = 30) -> float | None:
    import requests

    start = time.perf_counter()
    try:
        r = requests.post(f"http://127.0.0.1:{port}/", files={"source": source, "target": target},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout)
        ok = r.status_code == 200
    except requests.RequestException:
        ok = False
    return (time.perf_counter() - start) * 1000 if ok else None


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def slow_rows(setup: str, models: Path, levels: list[int], seconds: float) -> list[list]:
    source = (SHARED / "images" / "obama.jpg").read_bytes()
    target = (SHARED / "images" / "biden.jpg").read_bytes()
    rows = []
    server = Server(setup, models)
    try:
        idle = [m for m in (_healthz_ms(server.port) for _ in range(20)) if m is not None]
        fusion_idle = [m for m in (_fusion_ms(server.port, source, target) for _ in range(3)) if m is not None]
        rows.append([setup, 0, len(idle), 0, round(_pct(idle, 0.5), 1), round(_pct(idle, 0.99), 1),
                     round(statistics.median(fusion_idle), 1) if fusion_idle else "-", f"{len(fusion_idle)}/3", 0])
        for n in levels:
            health, fails, fusions, fusion_fails = [], 0, [], 0
            with Trickle(server.port, n) as trickle:
                deadline = time.time() + seconds
                next_fusion = time.time()
                while time.time() < deadline:
                    ms = _healthz_ms(server.port)
                    if ms is None:
                        fails += 1
                    else:
                        health.append(ms)
                    if time.time() >= next_fusion:
                        ms = _fusion_ms(server.port, source, target)
                        fusions.append(ms) if ms is not None else None
                        fusion_fails += ms is None
                        next_fusion = time.time() + 5
                    time.sleep(0.2)
                reopened = trickle.reopened
            rows.append([setup, n, len(health) + fails, fails, round(_pct(health, 0.5), 1), round(_pct(health, 0.99), 1),
                         round(statistics.median(fusions), 1) if fusions else "-",
                         f"{len(fusions)}/{len(fusions) + fusion_fails}", reopened])
            time.sleep(1)
    finally:
        server.stop()
    return rows


def status_rows(setup: str, models: Path, long_path_mb: int = 16) -> list[list]:
    server = Server(setup, models)
    rows = []
    try:
        port = server.port
        start = time.perf_counter()
        path = "/" + "a" * (long_path_mb << 20)
        status, _, body = request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n", timeout=60)
        rows.append([setup, f"10: GET with a {long_path_mb} MB path", status, f"{time.perf_counter() - start:.2f} s",
                     f"answer {len(body)} B"])
        status, _, body = request(port, f"GET /{'b' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n")
        rows.append([setup, "10: GET with a 9000 B path", status, "", f"answer {len(body)} B"])
        status, headers, _ = request(port, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     "Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n", timeout=5)
        rows.append([setup, "1: Expect: 100-continue, no token", status,
                     "100 granted" if headers.get("interim") else "no 100", headers.get("connection", "-")])
        status, headers, _ = request(port, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + AUTH +
                                     f"Content-Length: {200 << 20}\r\n\r\n", timeout=5)
        rows.append([setup, "1: 200 MB JSON Content-Length, token", status, "", headers.get("connection", "-")])
        status, headers, _ = request(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        logged = any(e.get("path") == "/metrics" and e.get("status") == 401 for e in server.log_lines())
        rows.append([setup, "11: GET /metrics without token", status, "logged" if logged else "NOT logged", ""])
        longest = max((len(json.dumps(e)) for e in server.log_lines()), default=0)
        rows.append([setup, "10: longest log line", "", f"{longest} B", ""])
        rows.append([setup, "server still serving", 200 if server.alive() else 0, "", ""])
    finally:
        server.stop()
    return rows


def run(setups: list[str], levels: list[int], seconds: float, body_mb: int, parallel_mb: int, long_path_mb: int,
        quiet: bool = False, parts: tuple[str, ...] = ("memory", "status", "slow")) -> dict:
    models = standin_models(enhancer=False)
    result: dict[str, list] = {"memory": [], "slow": [], "status": []}
    for setup in setups:
        if "memory" in parts:
            result["memory"] += memory_rows(setup, models, body_mb, parallel_mb)
        if "status" in parts:
            result["status"] += status_rows(setup, models, long_path_mb)
        if levels and "slow" in parts:
            result["slow"] += slow_rows(setup, models, levels, seconds)
    if not quiet:
        print("Peak RSS growth of the serving process under one attack (fresh server each):")
        print(table(["setup", "body", "peak RSS growth MB", "status", "connection", "s", "serving after"], result["memory"]))
        print()
        print(f"/healthz (new connection each, ~5/s) and a multipart fusion (every 5 s) during {seconds:g} s of slow connections:")
        print(table(["setup", "slow conns", "probes", "probe failures", "healthz p50 ms", "healthz p99 ms",
                     "fusion median ms", "fusions ok", "reopened"], result["slow"]))
        print()
        print(table(["setup", "check", "status", "detail", "more"], result["status"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="old,new")
    parser.add_argument("--slow", default="10,50,200", help="slow connection counts ('' for none)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--body-mb", type=int, default=1024)
    parser.add_argument("--parallel-mb", type=int, default=200)
    parser.add_argument("--long-path-mb", type=int, default=16)
    parser.add_argument("--parts", default="memory,status,slow")
    args = parser.parse_args()
    run(args.setups.split(","), [int(x) for x in args.slow.split(",") if x], args.seconds, args.body_mb,
        args.parallel_mb, args.long_path_mb, parts=tuple(args.parts.split(",")))


if __name__ == "__main__":
    main()
