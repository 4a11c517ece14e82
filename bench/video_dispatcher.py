"""A local stand-in for Knative's Broker and segment Trigger, for the video benches.

It listens where the workers' K_SINK points, takes every event the function sends (answering 202, as
a Broker does once it has the event) and delivers each `dev.facefusion.segment.requested` to the
next free worker with the CloudEvents SDK in binary mode, as the Trigger would: a connection error,
404, 408, 409, 429 or 5xx is redelivered (to whichever worker is free next) after a short pause; any
other 4xx goes to the worker's /dead-letter route with the knativeerror* extensions, as a
deadLetterSink would receive it. `dev.facefusion.fusion.completed` events are kept for the caller.
For the replay bench it can also duplicate events and hand them out in random order.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from bench.common import free_port

SEGMENT_REQUESTED = "dev.facefusion.segment.requested"
FUSION_COMPLETED = "dev.facefusion.fusion.completed"
RETRIED = (404, 408, 409, 429)
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per event


class Dispatcher:
    def __init__(self, duplicate: float = 0.0, shuffle: bool = False, seed: int = 0, retry_pause_s: float = 0.2) -> None:
        self.workers: list[str] = []  # base URLs (attach); a worker restarted on the same port keeps its place
        self.duplicate, self.shuffle, self.retry_pause_s = duplicate, shuffle, retry_pause_s
        self.rng = random.Random(seed)
        self.completed: list[CloudEvent] = []
        self.stats = {"received": 0, "deliveries": 0, "redeliveries": 0, "duplicates_sent": 0, "dead_letters": 0}
        self._pending: list[CloudEvent] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self._httpd = make_server("127.0.0.1", self.port, self._receive, threaded=True)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def attach(self, workers: list[str]) -> None:
        """Start delivering to these workers: one delivery at a time each (their MAX_INFLIGHT=1 slot)."""
        self.workers = list(workers)
        for slot in range(len(self.workers)):
            threading.Thread(target=self._deliver_loop, args=(slot,), daemon=True).start()

    # -- the sink ------------------------------------------------------------------------------------------
    def _receive(self, environ, start_response):
        request = Request(environ)
        event = from_http(dict(request.headers), request.get_data())
        with self._cond:
            self.stats["received"] += 1
            if event["type"] == FUSION_COMPLETED:
                self.completed.append(event)
            elif event["type"] == SEGMENT_REQUESTED:
                copies = 2 if self.rng.random() < self.duplicate else 1
                self.stats["duplicates_sent"] += copies - 1
                self._pending.extend([event] * copies)
            self._cond.notify_all()
        return Response(status=202)(environ, start_response)

    # -- the trigger ---------------------------------------------------------------------------------------
    def _next(self) -> CloudEvent | None:
        with self._cond:
            while not self._pending and not self._stop.is_set():
                self._cond.wait(0.2)
            if self._stop.is_set():
                return None
            index = self.rng.randrange(len(self._pending)) if self.shuffle else 0
            return self._pending.pop(index)

    def _requeue(self, event: CloudEvent) -> None:
        with self._cond:
            self.stats["redeliveries"] += 1
            self._pending.append(event)
            self._cond.notify_all()

    def _deliver_loop(self, slot: int) -> None:
        session = requests.Session()  # one per delivery thread
        while True:
            event = self._next()
            if event is None:
                return
            headers, body = to_binary(event)
            url = self.workers[slot].rstrip("/")
            with self._cond:
                self.stats["deliveries"] += 1
            try:
                reply = session.post(url + "/", headers=headers, data=body, timeout=600)
                status, text = reply.status_code, reply.content[:1024]
            except requests.RequestException as exc:
                status, text = 0, str(exc).encode()[:1024]
            if 200 <= status < 300:
                continue
            if status == 0 or status >= 500 or status in RETRIED:
                time.sleep(self.retry_pause_s)
                self._requeue(event)
                continue
            self._dead_letter(url, event, status, text)

    def _dead_letter(self, url: str, event: CloudEvent, status: int, body: bytes) -> None:
        with self._cond:
            self.stats["dead_letters"] += 1
        dead = CloudEvent({**event.get_attributes(), "knativeerrorcode": str(status),
                           "knativeerrordata": base64.b64encode(body).decode(), "knativeerrordest": url}, event.data)
        headers, data = to_binary(dead)
        with contextlib.suppress(requests.RequestException):
            requests.post(url + "/dead-letter", headers=headers, data=data, timeout=60)

    def wait_completed(self, job_id: str, timeout: float, tick: Callable[[], None] | None = None) -> CloudEvent | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._cond:
                for event in self.completed:
                    if event.data.get("job") == job_id:
                        return event
            if tick is not None:
                tick()
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._httpd.shutdown()
