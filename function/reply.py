"""What every route handler returns: the response, plus what the request log records about it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import flask


@dataclass
class Reply:
    response: flask.Response
    kind: str  # multipart, json, cloudevent, batch, storage-notification, healthz, …
    event_id: str = ""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def without_body_type(response: flask.Response) -> flask.Response:
    """A response without a body carries no Content-Type: Flask's default, text/html, would claim
    one (202 for events, the OPTIONS handshake, an empty batch)."""
    # the body's length, not the body: get_data() joined a fused image's bytes on every answer
    if not response.is_streamed and response.status_code != 304 and not response.calculate_content_length():
        del response.headers["Content-Type"]
    return response
