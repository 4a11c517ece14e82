"""RFC 9457 problem responses, and the mapping from failures to statuses (DESIGN.md's table).

The status decides whether Knative Eventing retries a delivery, so it is part of the contract:
4xx (but 429) is poison and is not retried; 429 and 503 are transient and are.
"""

from __future__ import annotations

import json

from flask import Response

from pipeline import (
    EmptyImage,
    FaceError,
    ImageTooLarge,
    InvalidOptions,
    ModelSetInvalid,
    PipelineError,
    RuntimeFailure,
    UndecodableImage,
    UnsupportedImageType,
)

PROBLEM_BASE = "https://facefusion.dev/problems/"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Problem(Exception):
    """A failure with its HTTP status; raised anywhere in the function, rendered once in main."""

    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.event_id = ""  # set when the problem belongs to one event of a batch

    @property
    def retryable(self) -> bool:
        return self.status in (429, 503, 504, 502)

    def as_dict(self) -> dict:
        return {"type": PROBLEM_BASE + self.code, "title": TITLES.get(self.status, "Error"),
                "status": self.status, "detail": self.detail}

    def response(self, instance: str = "", extra_headers: dict[str, str] | None = None) -> Response:
        body = self.as_dict()
        if instance:
            body["instance"] = instance
        headers = dict(extra_headers or {})
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return Response(json.dumps(body), status=self.status, mimetype="application/problem+json", headers=headers)


def from_pipeline(exc: PipelineError) -> Problem:
    if isinstance(exc, ImageTooLarge):
        return Problem(413, exc.code, exc.message)
    if isinstance(exc, (UnsupportedImageType,)):
        return Problem(415, exc.code, exc.message)
    if isinstance(exc, (EmptyImage, InvalidOptions)):
        return Problem(400, exc.code, exc.message)
    if isinstance(exc, (UndecodableImage, FaceError)):
        return Problem(422, exc.code, exc.message)
    if isinstance(exc, (ModelSetInvalid, RuntimeFailure)):
        return Problem(503, exc.code, exc.message, retry_after=5)
    return Problem(422, exc.code, exc.message)
