"""Start the function as production does (`python -m function.serve`, function/serve.py) on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.common import stop_process

REPO = Path(__file__).resolve().parents[1]
# the service's own settings never leak from the test process into a server under test
CONFIG_VARS = {"MODEL_PATH", "MODEL_VERSION", "EXECUTION_PROVIDERS", "CACHE_PATH", "WARMUP", "SOURCE_FACE_URI",
               "OUTPUT_URI", "INPUT_URI_TEMPLATE", "ALLOWED_URI_PREFIXES", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS",
               "MAX_INFLIGHT", "AUTH_TOKEN", "REPLY_EVENTS", "K_SERVICE", "K_REVISION", "K_CONFIGURATION",
               "ALLOWED_OUTPUT_PREFIXES", "LEASE_TTL_S", "MAX_BATCH", "MODEL_WAIT_S", "STORAGE_TIMEOUT_S",
               "READY_WAIT_S", "DRAIN_SECONDS", "DRAIN_MAX_SECONDS", "OPTIMISED_GRAPHS", "PORT", "WORKERS",
               "MAX_REQUEST_BYTES", "MAX_REQUEST_LINE", "MAX_HEADERS", "MAX_HEADER_BYTES", "HEADER_TIMEOUT_S",
               "BODY_TIMEOUT_S", "KEEPALIVE_S", "MAX_CONNECTIONS", "MAX_CONNECTION_REQUESTS", "THREADS", "UVICORN_LOG_LEVEL", "IMAGE_CODEC",
               "CUDA_EARLY_CONTEXT", "CUDA_DEVICE_ID"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(port: int) -> list[str]:
    """The one way to serve the function (README, Serving), on loopback."""
    return [sys.executable, "-m", "function.serve", "--host", "127.0.0.1", "--port", str(port)]


class FunctionServer:
    def __init__(self, env: dict[str, str], wait_ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
        full_env = {**inherited, "PORT": str(self.port), "PYTHONUNBUFFERED": "1", **env}
        self.log_path = Path(env.get("CACHE_PATH", "/tmp")) / f"server-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command(self.port),
            cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(ready=wait_ready)

    def wait(self, ready: bool, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                r = requests.get(self.url + "/readyz", timeout=2)
                if not ready or r.status_code == 200 or r.json().get("status") == "failed":
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None and requests.get(self.url + "/healthz", timeout=5).status_code == 200

    def stop(self) -> None:
        stop_process(self.proc, timeout=20, on_timeout=self._report_stuck)
        self._log.close()

    def _report_stuck(self) -> None:
        """A server that has not left 20 s after SIGTERM: what each of its processes was doing (shown
        with the test's failure), so a rare hang says where it hung. Threads' kernel wait channels and
        states; the Python side is in the server's log."""
        lines = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) != self.proc.pid:  # process group
                    continue
                pid = stat.parent.name
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                threads = [f"{(t / 'comm').read_text().strip()}:{(t / 'stat').read_text().rsplit(')', 1)[1].split()[0]}"
                           f"/{(t / 'wchan').read_text()}" for t in (stat.parent / "task").iterdir()]
                lines.append(f"pid {pid} {cmd}: {' '.join(threads)}")
            except (OSError, IndexError, ValueError):
                continue
        print("server did not stop within 20 s of SIGTERM:\n" + "\n".join(lines) + "\n" + self.logs()[-3000:],
              file=sys.stderr)
