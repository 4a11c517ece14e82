"""The front door (function/front_door.py, function/serve.py) over real HTTP on loopback, raw sockets
where the point is what the server does before a body has arrived: refusals without reading the body,
bounded request lines and headers, slow clients that cannot starve /healthz, the drain with WORKERS=2,
and a reduced run of bench/attack.py (statuses only, no timing thresholds)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.attack import _read_status, send_body
from bench.common import worker_pids
from bench.form_client import multipart_form
from bench.gpu import server_timing, wait_ready

from .conftest import REPO, shared_file
from .server import FunctionServer

TOKEN = "front-door-token"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
LIMIT = 1 << 20  # MAX_REQUEST_BYTES for the module's server
VIDEO_LIMIT = 1 << 19  # MAX_VIDEO_BYTES: multipart bodies may be this much larger (a video target)


@pytest.fixture(scope="module")
def server(model_root, tmp_path_factory):
    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path_factory.mktemp("front-door")),
                          "AUTH_TOKEN": TOKEN, "MAX_REQUEST_BYTES": str(LIMIT), "HEADER_TIMEOUT_S": "1",
                          "MAX_VIDEO_BYTES": str(VIDEO_LIMIT),
                          "BODY_TIMEOUT_S": "2"})
    yield srv
    srv.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def closed_by_server(sock: socket.socket, within: float = 10) -> bool:
    """True when the server closes (EOF or reset) within `within` seconds; whatever arrives is dropped."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("ctype", ["application/json", "application/cloudevents+json",
                                   "application/cloudevents-batch+json", "multipart/form-data; boundary=x"])
def test_no_token_is_refused_before_the_body(server, ctype):
    with connect(server) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {1 << 30}\r\n\r\n".encode())
        sock.sendall(b"0" * 65536)  # a little of the 1 GiB: the answer must not wait for the rest
        status, headers, body = _read_status(sock, 10)
        assert status == 401 and headers["connection"] == "close"
        assert json.loads(body)["type"].endswith("unauthorized")
        assert closed_by_server(sock)
    assert server.alive()


def test_expect_100_continue_is_not_granted_without_a_token(server):
    with connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 401 "), first[:40]
        assert closed_by_server(sock)


def test_expect_100_continue_is_granted_with_a_token(server):
    with connect(server) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n{AUTH}"
                     "Expect: 100-continue\r\n\r\n".encode())
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"{}")
        status, _, body = _read_status(sock, 10)
        assert status == 400 and "source" in json.loads(body)["detail"]


@pytest.mark.parametrize("ctype", ["application/json", "application/cloudevents+json",
                                   "application/cloudevents-batch+json", "multipart/form-data; boundary=x"])
def test_content_length_over_the_limit_is_413_before_the_body(server, ctype):
    limit = LIMIT + VIDEO_LIMIT if ctype.startswith("multipart/") else LIMIT
    with connect(server) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n{AUTH}Content-Length: {limit + 1}\r\n\r\n"
                     .encode())
        status, headers, body = _read_status(sock, 10)  # not one byte of the body was sent
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body)["type"].endswith("request-too-large")
        assert closed_by_server(sock)


def test_chunked_body_is_counted_and_cut_at_the_limit(server):
    result = send_body(server.port, 4 * LIMIT, auth=False, chunked=True)
    assert result["status"] == 401  # no token: refused before the first chunk
    with connect(server) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{AUTH}"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        piece = b"1" * 65536
        sent = 0
        try:
            while sent <= LIMIT + len(piece):
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                sent += len(piece)
        except OSError:
            pass
        status, headers, _ = _read_status(sock, 10)
        assert status == 413 and headers["connection"] == "close"
    r = requests.post(server.url + "/", data=iter([b"{", b"}"]), timeout=10,  # a small chunked body still works
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "source" in r.json()["detail"]


def test_request_line_and_headers_are_bounded_and_never_echoed(server):
    with connect(server) as sock:  # 1 MB request target: refused by the header-block limit, nothing echoed
        sock.sendall(b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = _read_status(sock, 10)
    assert status == 400 and b"aaaa" not in body
    r = requests.get(server.url + "/" + "b" * 9000, timeout=10)
    assert r.status_code == 414 and len(r.content) < 1000 and r.headers["Connection"] == "close"
    r = requests.get(server.url + "/" + "c" * 8000, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 404 and len(r.json()["instance"]) < 300
    r = requests.get(server.url + "/healthz", headers={f"X-H{i}": "v" for i in range(150)}, timeout=10)
    assert r.status_code == 431
    time.sleep(0.2)
    lines = [json.loads(x) for x in server.logs().splitlines() if x.startswith("{")]
    assert lines and max(len(line["path"]) for line in lines) < 300
    assert server.alive()


def test_metrics_401_is_logged(server):
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 401
    time.sleep(0.2)
    lines = [json.loads(x) for x in server.logs().splitlines() if x.startswith("{")]
    assert any(line["path"] == "/metrics" and line["status"] == 401 for line in lines)
    ok = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert ok.status_code == 200  # a scrape that succeeds is still not logged
    time.sleep(0.2)
    lines = [json.loads(x) for x in server.logs().splitlines() if x.startswith("{")]
    assert not any(line["path"] == "/metrics" and line["status"] == 200 for line in lines)


def test_stalled_headers_and_bodies_are_timed_out(server):
    with connect(server) as sock:  # HEADER_TIMEOUT_S=1
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert closed_by_server(sock, within=10)
    with connect(server) as sock:  # BODY_TIMEOUT_S=2
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{AUTH}Content-Length: 100\r\n\r\n{{"
                     .encode())
        status, headers, _ = _read_status(sock, 15)
        assert status == 408 and headers["connection"] == "close"


def test_slow_clients_do_not_starve_healthz_or_fusions(server):
    """30 connections trickling headers or bodies (gunicorn's threaded worker hung on 10)."""
    socks = []
    try:
        for i in range(30):
            sock = connect(server)
            if i % 2:
                sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{AUTH}"
                             "Content-Length: 1000\r\n\r\n{".encode())
            else:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n")
            socks.append(sock)
        for _ in range(5):
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        files = {"source": shared_file("images", "obama.jpg").read_bytes(), "target": shared_file("images", "biden.jpg").read_bytes()}
        r = requests.post(server.url + "/", files=files, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert r.status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_server_timing_names_the_upload_the_queue_and_the_handler(server):
    """A fusion's Server-Timing starts with the front door's part: `receive` holds a slow upload (here a
    pause of 1 s in the middle of the body), and no entry counts time another does, so together they
    never exceed what the client waited. The log line carries `receive_ms` and `queue_ms`."""
    body, content_type = multipart_form({"source": shared_file("images", "obama.jpg").read_bytes(),
                                         "target": shared_file("images", "biden.jpg").read_bytes()})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        started = time.perf_counter()
        conn.putrequest("POST", "/")
        for name, value in (("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Authorization", f"Bearer {TOKEN}")):
            conn.putheader(name, value)
        conn.endheaders(body[:len(body) // 2])
        time.sleep(1.0)  # BODY_TIMEOUT_S is 2
        conn.send(body[len(body) // 2:])
        answer = conn.getresponse()
        answer.read()
        waited_ms = (time.perf_counter() - started) * 1000
    finally:
        conn.close()
    assert answer.status == 200
    timings = server_timing(answer.getheader("Server-Timing"))  # in the header's order
    names = list(timings)
    assert names[:3] == ["receive", "queue", "handler"] and {"decode", "detect", "swap", "encode"} <= set(names[3:])
    # the pause, less however late the server read the request's head (a busy machine: 3 ms late seen)
    assert timings["receive"] >= 700 and min(timings.values()) >= 0, timings
    # (on the CPU a new source is made in turn, so its stages never overlap the target's)
    assert sum(timings.values()) <= waited_ms + 0.05 * len(timings), (timings, waited_ms)  # each rounded to 0.1 ms
    # the request's log line has the front door's part too (written before `handler` is known)
    lines = [json.loads(x) for x in server.logs().splitlines() if x.startswith("{")]
    logged = [line for line in lines if line.get("status") == 200 and line.get("receive_ms", 0) >= 700]
    assert len(logged) == 1 and logged[0]["queue_ms"] >= 0 and logged[0]["receive_ms"] == timings["receive"], lines[-3:]


def test_refused_bodies_do_not_grow_memory(server):
    pid = server.proc.pid
    before = rss_mb(pid)
    threads = [threading.Thread(target=send_body, args=(server.port, 200 << 20, bool(i % 2))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert rss_mb(pid) - before < 50
    assert server.alive()


def _pod_metrics(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", timeout=10).text
    return {f"{s.name}{sorted(s.labels.items())}": s.value for family in text_string_to_metric_families(text)
            for s in family.samples}


def test_two_workers_serve_count_the_whole_pod_and_drain(model_root, tmp_path):
    """Two workers on one socket serve, and every scrape counts the whole pod: a scrape reaches one worker
    through the shared socket; it saw that worker's counters alone, so the pod's total jumped between
    workers' values (read as counter resets) and undercounted. Each worker takes its share of the CPUs
    (CPU_THREADS=share). The supervisor stays small. A SIGTERM then drains both, exit 0."""
    images = {"source": shared_file("images", "obama.jpg").read_bytes(),
              "target": shared_file("images", "biden.jpg").read_bytes()}
    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"), "WORKERS": "2",
                          "CPU_THREADS": "share"})
    try:
        # both ready (bench.gpu's wait, which tells workers apart by the pid /readyz gives): the second
        # starts once the first is ready
        wait_ready(srv.url + "/", srv.proc, workers=2, started=time.perf_counter(), timings={})
        children = worker_pids(srv.proc.pid)
        assert len(children) == 2
        folders = {Path(f"/proc/{pid}/environ").read_bytes().split(b"PROMETHEUS_MULTIPROC_DIR=")[1].split(b"\0")[0]
                   for pid in children}
        assert len(folders) == 1  # one folder for the pod
        # the supervisor only reads settings: it never loads the inference stack (numpy, OpenCV, ONNX
        # Runtime: ~60 MB and ~0.2 s before the workers could start)
        maps = Path(f"/proc/{srv.proc.pid}/maps").read_text()
        assert not [lib for lib in ("onnxruntime", "cv2", "_multiarray_umath") if lib in maps]
        for _ in range(6):
            assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200
        # CPU_THREADS=share: each worker sized its native pools to half the CPUs, not to all of them
        share = max(1, len(os.sched_getaffinity(0)) // 2)
        assert {requests.get(srv.url + "/readyz", timeout=5).json().get("cpu_threads") for _ in range(6)} == {share}
        for _ in range(6):
            assert requests.post(srv.url + "/", files=images, timeout=60).status_code == 200
        key = "facefusion_requests_total[('kind', 'multipart'), ('route', '/'), ('status', '200')]"
        for _ in range(8):  # whichever worker answers
            scraped = _pod_metrics(srv.url)
            assert scraped[key] == 6, {k: v for k, v in scraped.items() if k.startswith("facefusion_requests_total")}
            info = [v for k, v in scraped.items() if k.startswith("facefusion_info[")]
            assert info == [1.0]  # one pod, whatever its workers
            assert scraped["facefusion_workers_ready[]"] == 2 and scraped["facefusion_workers[]"] == 2
            assert scraped["facefusion_inflight_fusions[]"] == 0
    finally:
        srv.stop()
    assert srv.proc.returncode == 0
    assert "Traceback" not in srv.log_path.read_text(errors="replace")
    assert not Path(next(iter(folders)).decode()).exists()  # the supervisor removes it


def test_the_first_worker_starts_alone_and_no_request_meets_a_loading_sibling(model_root, tmp_path):
    """WORKERS=2: the second worker starts once the first has its verdict (eight starting together slowed
    each other's start), and takes no connection before its own: from the first 200, every /readyz answer
    is a 200, whichever process took it; /readyz names that process (`pid`). A keep-alive client that
    connected while the first served alone reaches the second too (MAX_CONNECTION_REQUESTS)."""
    from warmup import process_start_time

    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"), "WORKERS": "2",
                          "MAX_CONNECTION_REQUESTS": "5"}, wait_ready=False)
    session = requests.Session()  # one keep-alive client: its connection, opened while the first worker
    try:  # served alone, moves on after 5 answers (MAX_CONNECTION_REQUESTS), so it meets the second too
        answers: list[tuple[int, int, dict]] = []  # (status, pid, timings) from the first 200 on
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len({pid for status, pid, _ in answers if status == 200}) < 2:
            try:
                reply = session.get(srv.url + "/readyz", timeout=5)
            except requests.RequestException:
                time.sleep(0.02)
                continue
            body = reply.json()
            if reply.status_code == 200 or answers:
                answers.append((reply.status_code, body["pid"], body["timings_s"]))
        assert len({pid for status, pid, _ in answers if status == 200}) == 2, answers[-3:]
        assert all(status == 200 for status, _, _ in answers)
        first, first_timings = answers[0][1], answers[0][2]
        second = [pid for pid in worker_pids(srv.proc.pid) if pid != first]
        assert len(second) == 1 and first in worker_pids(srv.proc.pid)
        first_decided = process_start_time(first) + first_timings["cold_start"]
        assert process_start_time(second[0]) >= first_decided - 0.05  # /proc's clock ticks: 10 ms
    finally:
        session.close()
        srv.stop()
    assert srv.proc.returncode == 0


def test_a_first_worker_that_dies_before_its_verdict_is_replaced_by_one_that_answers_probes(model_root, tmp_path):
    """WORKERS=2 with no model set yet: the first worker answers /readyz 503 `waiting` while its sibling
    waits to start. Killed, it comes back (alone, so serving at once) and answers again: no moment where
    every worker waits for a verdict and probes hang. Once the set appears, both end up ready."""
    root = tmp_path / "models"
    root.mkdir()
    srv = FunctionServer({"MODEL_PATH": str(root), "CACHE_PATH": str(tmp_path / "c"), "WORKERS": "2",
                          "MODEL_WAIT_S": "0.2"}, wait_ready=False)

    def waiting_answer(deadline_s: float = 60) -> dict:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                body = requests.get(srv.url + "/readyz", timeout=5).json()
                if body["status"] == "waiting":
                    return body
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"no /readyz `waiting` answer in {deadline_s} s:\n{srv.logs()[-2000:]}")

    try:
        first = waiting_answer()["pid"]
        assert worker_pids(srv.proc.pid) == [first]  # its sibling waits for its verdict
        os.kill(first, signal.SIGKILL)
        replaced = waiting_answer()["pid"]  # restarted after 1 s, alone: it answers while it waits too
        assert replaced != first and worker_pids(srv.proc.pid) == [replaced]
        shutil.copytree(model_root / "test", root / "test")
        os.symlink("test", root / "current")
        wait_ready(srv.url + "/", srv.proc, workers=2, started=time.perf_counter(), timings={})
        assert len(worker_pids(srv.proc.pid)) == 2
    finally:
        srv.stop()
    assert srv.proc.returncode == 0


def test_a_keep_alive_connection_closes_after_its_hundredth_answer_and_says_so(server):
    """MAX_CONNECTION_REQUESTS (100 by default): the 100th answer on one connection says `Connection:
    close` and the server closes it after; the 99 before keep it open. The client is told, so it never
    sends on a connection the server is closing."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(99):
            conn.request("GET", "/healthz")
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200 and answer.getheader("Connection") is None
        raw = conn.sock.dup()  # to watch the server's side once http.client has let its socket go
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200 and answer.getheader("Connection") == "close"
        assert closed_by_server(raw, within=5)
        raw.close()
    finally:
        conn.close()


def test_sigterm_while_the_app_is_built_leaves_at_once_with_0(tmp_path):
    """A pod (or a worker set) stopped while a process imports and builds the app: it died by the signal
    (-15), which the supervisor reported as a failure. The build is held here, as slow imports would."""
    script = ("import time, function.serve as s\n"
              "from function.config import FunctionConfig\n"
              "s.build_app = lambda: time.sleep(600)  # the imports and the app's build, taking their time\n"
              "s.serve(s.bind('127.0.0.1', 0), FunctionConfig.from_env())\n")
    env = {**os.environ, "MODEL_PATH": str(tmp_path / "none"), "CACHE_PATH": str(tmp_path / "c")}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            caught = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                          if line.startswith("SigCgt:"))
            if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):  # a handler for SIGTERM is set
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def test_several_workers_default_to_waiting_for_readiness():
    """The pod is ready once one worker is; a fusion reaching a sibling that still loads waits for it
    (READY_WAIT_S defaults to 30 s with WORKERS > 1) instead of failing with 503."""
    from function.config import FunctionConfig

    assert FunctionConfig.from_env({"WORKERS": "2"}).request_wait_s == 30
    assert FunctionConfig.from_env({"WORKERS": "2", "READY_WAIT_S": "0"}).request_wait_s == 0
    assert FunctionConfig.from_env({}).request_wait_s == 0


def test_attack_bench_reduced():
    """bench/attack.py with small numbers: statuses and survival, no timings."""
    shared_file("models", "scrfd_2.5g_bnkps.onnx")
    from bench.attack import run

    result = run(["new"], [6], seconds=2, body_mb=128, parallel_mb=100, long_path_mb=1, quiet=True)
    memory = {row[1]: row for row in result["memory"]}
    assert memory["128 MB, no token"][3] == "401" and memory["128 MB, token"][3] == "413"
    assert memory["4 x 100 MB, token"][3] == "413,413,413,413"
    assert memory["128 MB chunked, token"][3] == "413"
    assert all(row[4].replace(",", "").replace("close", "") == "" for row in result["memory"])
    assert all(row[-1] == "yes" for row in result["memory"])
    assert memory["128 MB, no token"][2] < 50 and memory["4 x 100 MB, token"][2] < 50
    statuses = {row[1]: row for row in result["status"]}
    assert statuses["10: GET with a 1 MB path"][2] == 400
    assert statuses["10: GET with a 9000 B path"][2] == 414
    assert statuses["1: Expect: 100-continue, no token"][2:4] == [401, "no 100"]
    assert statuses["11: GET /metrics without token"][3] == "logged"
    assert statuses["server still serving"][2] == 200
    slow = [row for row in result["slow"] if row[1] == 6]
    assert slow and slow[0][3] == 0  # no /healthz probe failed


def test_the_listening_socket_is_tcp_so_connections_get_nodelay():
    """asyncio turns Nagle off only on connections accepted from a socket whose protocol says TCP; with
    Nagle on, every keep-alive answer waited 40 ms for the client's delayed ACK."""
    import socket as socket_module

    from function.serve import bind

    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket_module.IPPROTO_TCP
