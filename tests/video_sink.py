"""A CloudEvents sink on loopback for the tests: what the function sends to K_SINK, parsed with the SDK."""

from __future__ import annotations

import threading

from cloudevents.http import CloudEvent, from_http
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from .server import free_port


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.status = 202  # what the sink answers (a test may make it fail)
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self._httpd = make_server("127.0.0.1", self.port, self._app, threaded=True)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def _app(self, environ, start_response):
        request = Request(environ)
        event = from_http(dict(request.headers), request.get_data())
        status = self.status
        if status < 300:  # an event refused was not taken
            with self._lock:
                self.events.append(event)
        return Response(status=status)(environ, start_response)

    def of_type(self, ce_type: str) -> list[CloudEvent]:
        with self._lock:
            return [e for e in self.events if e["type"] == ce_type]

    def stop(self) -> None:
        self._httpd.shutdown()
