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
