"""Direct fusion over HTTP: multipart uploads and JSON bodies, answered with the image or a report."""

from __future__ import annotations

from typing import Any

import flask

from . import storage
from .fusion import format_for_uri, fusion_headers, parse_options, run_fusion
from .inputs import ImageRef, fetch_all, image_ref
from .problems import Problem
from .reply import Reply, json_response
from .runtime import Runtime

IMAGE_FIELDS = ("source", "target", "reference")


def multipart(rt: Runtime, request: flask.Request) -> Reply:
    limit = rt.max_image_bytes()
    if request.content_length is not None and request.content_length > 3 * limit + (1 << 20):
        raise Problem(413, "request-too-large", "the request body exceeds the limit for three images")
    files = request.files
    for name in ("source", "target"):
        if name not in files:
            raise Problem(400, "missing-field", f"multipart field '{name}' (a file) is required")
    refs = {}
    for name in IMAGE_FIELDS:
        if name in files:
            data = files[name].read(limit + 1)
            if len(data) > limit:
                raise Problem(413, "image-too-large", f"'{name}' exceeds {limit} bytes")
            refs[name] = ImageRef(data=data)
    return Reply(_fuse(rt, refs, dict(request.form), request.headers.get("Accept", ""), request.form.get("output")),
                 "multipart")


def json_body(rt: Runtime, body: dict[str, Any], request: flask.Request) -> Reply:
    for name in ("source", "target"):
        if name not in body:
            raise Problem(400, "missing-field", f"JSON field '{name}' is required")
    options = body.get("options") if isinstance(body.get("options"), dict) else {
        k: v for k, v in body.items() if k not in (*IMAGE_FIELDS, "output")}
    refs = {name: image_ref(rt, body[name], name) for name in IMAGE_FIELDS if name in body}
    return Reply(_fuse(rt, refs, options, request.headers.get("Accept", ""), body.get("output")), "json")


def _fuse(rt: Runtime, refs: dict[str, ImageRef], raw: dict[str, Any], accept: str, output: Any) -> flask.Response:
    """Check the output URI and options, then take a fusion slot, fetch the inputs and fuse."""
    fuser = rt.fuser()
    if output is not None and not isinstance(output, str):
        raise Problem(400, "invalid-uri", "'output' must be a URI")
    out_uri = rt.allow.check(output) if output else None
    options = parse_options(raw, accept=accept, default_format=format_for_uri(out_uri) if out_uri else "jpeg")
    with rt.limiter.slot():
        blobs = fetch_all(rt, refs)
        options.reference = blobs.get("reference")
        result, timer = run_fusion(fuser, blobs["source"], blobs["target"], options)
        headers = fusion_headers(result, timer, rt.config.revision)
        if out_uri is None:
            return flask.Response(result.data, status=200, mimetype=result.media_type, headers=headers)
        storage.write_atomic(out_uri, result.data, rt.config.storage_timeout_s)
    body = {"output": out_uri, "media_type": result.media_type, "revision": rt.config.revision,
            **result.report.as_dict()}
    return json_response(body, headers=headers)
