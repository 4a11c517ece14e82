"""Sending CloudEvents to K_SINK, the address a SinkBinding (or the Broker) gives this process.

Binary mode over HTTP POST, built with the CloudEvents SDK. A 5xx answer, a failed connection, or one of
the 4xx that mean "not now" (404 while the Broker's address is not yet routed, 408, 409, 429) is retried
SINK_RETRIES times with a doubling pause (0.2 s, 0.4 s, ...); any other 4xx is final. K_CE_OVERRIDES,
which a SinkBinding may set (`{"extensions": {...}}`), is applied to every event sent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from .problems import Problem

log = logging.getLogger("facefusion.sink")
_session: Any = None  # one requests.Session, made with the first event sent (requests stays out of the cold start)
_session_lock = threading.Lock()


def _http() -> Any:
    """The module `requests`, with the shared session made on first use."""
    global _session
    import requests

    with _session_lock:
        if _session is None:
            _session = requests.Session()
    return requests


def overrides(raw: str | None) -> dict[str, str]:
    """The extensions of K_CE_OVERRIDES (ignored when malformed: a SinkBinding writes it, not a user)."""
    if not raw:
        return {}
    try:
        ext = json.loads(raw).get("extensions", {})
    except (ValueError, AttributeError):
        log.warning("K_CE_OVERRIDES is not a JSON object with 'extensions'; ignored")
        return {}
    return {str(k): str(v) for k, v in ext.items()} if isinstance(ext, dict) else {}


def send(sink: str, attributes: dict[str, Any], data: Any, retries: int, extensions: dict[str, str] | None = None,
         timeout: float = 10.0) -> None:
    """POST one event; a 503 problem when the sink kept failing (the caller's delivery is then retried)."""
    event = CloudEvent({**attributes, **(extensions or {})}, data)
    headers, body = to_binary(event)
    pause = 0.2
    last = ""
    requests = _http()
    for attempt in range(retries + 1):
        try:
            reply = _session.post(sink, headers=headers, data=body, timeout=timeout)
        except requests.RequestException as exc:
            last = type(exc).__name__
        else:
            if reply.status_code < 300:
                return
            last = f"HTTP {reply.status_code}"
            if reply.status_code < 500 and reply.status_code not in (404, 408, 409, 429):
                break  # the sink refuses this event: retrying cannot help
        if attempt < retries:
            time.sleep(pause)
            pause *= 2
    raise Problem(503, "sink-unavailable", f"K_SINK did not take the event ({last})", retry_after=5)
