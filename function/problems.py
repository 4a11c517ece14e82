"""RFC 9457 problem responses, and the one mapping from pipeline failures to statuses (README, statuses).

The status decides whether Knative Eventing retries a delivery, so it is part of the contract:
4xx (but 429) is poison and is not retried; 429 and 503 are transient and are.
"""

from __future__ import annotations

import json

from flask import Response
from werkzeug.exceptions import HTTPException

from pipeline import (
    EmptyImage,
    ImageTooLarge,
    InvalidOptions,
    ModelSetInvalid,
    PipelineError,
    RuntimeFailure,
    UnsupportedImageType,
    VideoError,
)

PROBLEM_BASE = "https://facefusion.dev/problems/"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Problem(Exception):
    """A failure with its HTTP status; raised anywhere in the function, rendered once in main."""

    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None,
                 image: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.image = image  # source | target | reference: the input an image or face error is about
        self.headers = headers or {}  # extra response headers (Allow with 405)

    @property
    def retryable(self) -> bool:
        return self.status in (429, 503, 504, 502)

    def as_dict(self) -> dict:
        body = {"type": PROBLEM_BASE + self.code, "title": TITLES.get(self.status, "Error"),
                "status": self.status, "detail": self.detail}
        if self.image:
            body["image"] = self.image
        return body

    def response(self, instance: str = "") -> Response:
        body = self.as_dict()
        if instance:
            body["instance"] = instance
        headers: dict[str, str] = dict(self.headers)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="facefusion"'
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return Response(json.dumps(body), status=self.status, mimetype="application/problem+json", headers=headers)


def as_problem(exc: Exception) -> Problem | None:
    """The problem a failure answers with: a Problem as it is, a pipeline failure by its type; None for
    anything else (an unexpected error, which the caller logs and answers with 503)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, PipelineError):
        problem = from_pipeline(exc)
        problem.__cause__ = exc  # the request log names the root cause by type
        return problem
    if isinstance(exc, HTTPException) and exc.code is not None and 400 <= exc.code < 500:
        # werkzeug's own refusals while parsing a body: more than MAX_FORM_PARTS multipart parts, a
        # non-file field over MAX_FORM_MEMORY_SIZE, a malformed form; the caller's mistakes, never retried
        problem = Problem(exc.code, _WERKZEUG_CODES.get(exc.code, "bad-request"),
                          f"{exc.name}: {exc.description}" if exc.description else exc.name)
        problem.__cause__ = exc
        return problem
    return None


_WERKZEUG_CODES = {400: "malformed-body", 413: "request-too-large", 415: "unsupported-media-type"}


def internal_error() -> Problem:
    """What an unexpected failure answers with (the cause goes to the log, never to the caller)."""
    return Problem(503, "internal-error", "an unexpected error occurred", retry_after=5)


def from_pipeline(exc: PipelineError) -> Problem:
    """The status of a pipeline failure by its type; the input it is about (`image`) goes along."""
    if isinstance(exc, (ModelSetInvalid, RuntimeFailure)):
        return Problem(503, exc.code, exc.message, retry_after=5)
    return Problem(_status(exc), exc.code, exc.message, image=exc.image)


def _status(exc: PipelineError) -> int:
    if isinstance(exc, VideoError):  # each video failure carries its status
        return exc.status
    if isinstance(exc, ImageTooLarge):
        return 413
    if isinstance(exc, UnsupportedImageType):
        return 415
    if isinstance(exc, (EmptyImage, InvalidOptions)):
        return 400
    return 422  # UndecodableImage, every FaceError (NoMatchingFace too), and whatever else the pipeline raises
