"""The function served from this test process (real HTTP on loopback, werkzeug's threaded server),
for tests that must reach into it: fsspec filesystems registered here, faults injected into it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import ModuleType

import pytest
import requests

from .server import CONFIG_VARS, free_port

REPO = Path(__file__).resolve().parents[1]


class InProcessServer:
    def __init__(self, env: dict[str, str]) -> None:
        import sys

        import functions_framework
        from werkzeug.serving import make_server

        self._mp = pytest.MonkeyPatch()
        for key in CONFIG_VARS:
            self._mp.delenv(key, raising=False)
        for key, value in env.items():
            self._mp.setenv(key, value)
        app = functions_framework.create_app(target="fuse", source=str(REPO / "function" / "main.py"))
        self.module: ModuleType = sys.modules["main"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._httpd = make_server("127.0.0.1", self.port, app, threaded=True)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        deadline = time.time() + 60
        while time.time() < deadline:
            if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                return
            time.sleep(0.05)
        raise TimeoutError("in-process function not ready")

    def stop(self) -> None:
        self._httpd.shutdown()
        self._mp.undo()
