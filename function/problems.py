"""RFC 9457 problem responses, and the one mapping from pipeline failures to statuses (README, statuses).

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

    @property
    def retryable(self) -> bool:
        return self.status in (429, 503, 504, 502)

    def as_dict(self) -> dict:
        return {"type": PROBLEM_BASE + self.code, "title": TITLES.get(self.status, "Error"),
                "status": self.status, "detail": self.detail}

    def response(self, instance: str = "") -> Response:
        body = self.as_dict()
        if instance:
            body["instance"] = instance
        headers: dict[str, str] = {}
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
    return None


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
