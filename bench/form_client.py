"""A lean HTTP client for load: one multipart form, encoded once, posted over a kept-alive connection.

Why not `requests`: it encodes the multipart body anew for every request and wraps the answer in
layers of Python, 1.4 ms of client CPU per 1080p fusion on the dev machine against 0.4 ms here
(`python -m bench.form_client`). On a GPU host the load's clients share the CPUs with the function;
every client millisecond is taken from the server under load and added to each latency at concurrency 1,
where it was counted as `outside` the server's stages. A real caller (Knative's queue-proxy, in Go) costs
far less than either.
"""

from __future__ import annotations

import http.client
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


def multipart_form(files: Mapping[str, bytes], fields: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data form: `files` as file parts (named after their
    field), `fields` as plain ones, as a browser or `requests` would send them."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class FormPoster:
    """Posts one prepared body to one URL again and again on a kept-alive connection; a connection the
    server closed in between (its keep-alive timeout) is opened again once, as any HTTP client does."""

    def __init__(self, url: str, body: bytes, content_type: str, timeout: float = 300) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.body, self.timeout = body, timeout
        self.headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        self.conn: http.client.HTTPConnection | None = None

    def post(self) -> Answer:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", self.path, body=self.body, headers=self.headers)
                response = self.conn.getresponse()
                return Answer(response.status, response.headers, response.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _compare(repeat: int = 30) -> None:
    """Client CPU per 1080p fusion, `requests` against FormPoster, against the function on loopback."""
    import tempfile
    import time
    from pathlib import Path

    import requests

    from bench.common import SHARED, single_face_1080p, standin_models, start_function, stop_process, table

    models = tempfile.TemporaryDirectory(prefix="ff-bench-models-")
    proc, url = start_function({"MODEL_PATH": str(standin_models(Path(models.name), enhancer=False))})
    try:
        files = {"source": (SHARED / "images" / "obama.jpg").read_bytes(), "target": single_face_1080p()}
        session, poster = requests.Session(), FormPoster(url, *multipart_form(files))

        def with_requests() -> None:
            assert session.post(url, files=files, timeout=300).status_code == 200

        def with_poster() -> None:
            assert poster.post().status == 200

        cpu = {"requests": [], "FormPoster": []}
        for _ in range(3):  # in turns, each warmed by one call that is not counted
            for name, call in (("requests", with_requests), ("FormPoster", with_poster)):
                call()
                start = time.process_time()
                for _ in range(repeat):
                    call()
                cpu[name].append((time.process_time() - start) * 1000 / repeat)
        best = {name: min(v) for name, v in cpu.items()}
        print(table(["client", "client CPU ms per request (best of 3)", "against requests"],
                    [[name, ms, ms / best["requests"]] for name, ms in best.items()]))
    finally:
        stop_process(proc)
        models.cleanup()


if __name__ == "__main__":
    _compare()
