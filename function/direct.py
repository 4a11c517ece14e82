"""Direct fusion over HTTP: multipart uploads and JSON bodies, answered with the image or a report."""

from __future__ import annotations

import select
import socket
import ssl
from typing import Any

import flask

from pipeline.sources import MAX_SOURCES

from . import video_direct
from .front_door import DISCONNECTED
from .fusion import fusion_headers, parse_options
from .inputs import ImageRef, Refs, about, fuse_inputs, image_ref, output_uri, source_refs, write_output
from .options import IMAGE_FIELDS
from .problems import Problem
from .reply import Reply, json_response
from .runtime import Runtime

JSON_FIELDS = (*IMAGE_FIELDS, "output", "options")  # the rest of a JSON body's members are options


def multipart(rt: Runtime, request: flask.Request) -> Reply:
    limit = rt.max_image_bytes()  # the body as a whole was held to MAX_REQUEST_BYTES by the front door
    if not request.mimetype_params.get("boundary"):
        raise Problem(400, "malformed-multipart", f"{request.mimetype} needs a boundary parameter in Content-Type")
    files, form = request.files, request.form
    if not files and not form and request.content_length:  # werkzeug found no part where there is a body
        raise Problem(400, "malformed-multipart", "the body holds no multipart part with the Content-Type's boundary")
    for name in (*files, *form):
        if len(files.getlist(name)) + len(form.getlist(name)) > 1 and name != "source":
            raise Problem(400, "invalid-options", f"multipart field '{name}' is given more than once")
    if len(files.getlist("source")) > MAX_SOURCES:  # repeated `source` files: several images, averaged
        raise Problem(400, "invalid-options", f"at most {MAX_SOURCES} 'source' files, got {len(files.getlist('source'))}",
                      image="source")
    for name in files:
        if name not in IMAGE_FIELDS:
            raise Problem(400, "invalid-options", f"multipart file '{name}' is not one of {', '.join(IMAGE_FIELDS)}")
    for name in IMAGE_FIELDS:
        if name in form:
            raise Problem(400, "missing-field", f"multipart field '{name}' must be a file, not text", image=name)
    for name in ("source", "target"):
        if name not in files:
            raise Problem(400, "missing-field", f"multipart field '{name}' (a file) is required", image=name)
    video = video_direct.is_video_upload(files["target"])  # a clip: the video path (video_direct.py)
    refs: Refs = {}
    for name in IMAGE_FIELDS:
        if video and name == "target":
            continue
        uploads = []
        for upload in files.getlist(name):
            data = upload.read(limit + 1)
            if name == "reference" and not data and not upload.filename:
                continue  # an HTML form's file input left blank: no reference, as an empty text field is no option
            if len(data) > limit:
                raise Problem(413, "image-too-large", f"'{name}' exceeds {limit} bytes", image=name)
            uploads.append(ImageRef(data=data))
        if uploads:
            refs[name] = uploads if len(uploads) > 1 else uploads[0]
    options = {k: v for k, v in form.items() if k != "output"}
    if "reference" in refs:  # the upload, so that the options' check sees it (refused unless faces=reference)
        options["reference"] = refs["reference"]
    if video:
        return video_direct.multipart(rt, request, refs, files["target"], options, form.get("output"))
    return Reply(_fuse(rt, request, refs, options, form.get("output"), form=True), "multipart")


def json_body(rt: Runtime, body: dict[str, Any], request: flask.Request) -> Reply:
    """`{"source", "target", "reference"?, "output"?, "options"?}`; options may also sit beside the images
    (each name in one place only), and a reference image may also sit in `options`, as in events."""
    for name in ("source", "target"):
        if name not in body:
            raise Problem(400, "missing-field", f"JSON field '{name}' is required", image=name)
    nested = body.get("options", {})
    if not isinstance(nested, dict):
        raise Problem(400, "invalid-options", "'options' must be a JSON object")
    beside = {k: v for k, v in body.items() if k not in JSON_FIELDS}
    if "reference" in body:
        beside["reference"] = body["reference"]
    twice = sorted(beside.keys() & nested.keys())
    if twice:
        raise Problem(400, "invalid-options", f"{', '.join(map(repr, twice))} given both in 'options' and beside it")
    options = {**beside, **nested}
    video = video_direct.is_video_value(body["target"])  # a clip: the video path (video_direct.py)
    images = {"source": body["source"], "target": body["target"], "reference": options.get("reference")}
    refs: Refs = {}
    for name, value in images.items():
        if (value is not None or name != "reference") and not (video and name == "target"):
            with about(name):
                refs[name] = source_refs(rt, value, image_ref) if name == "source" else image_ref(rt, value, name)
    if video:
        return video_direct.json_body(rt, refs, body["target"], options, body.get("output"))
    return Reply(_fuse(rt, request, refs, options, body.get("output")), "json")


def client_gone(request: flask.Request) -> bool:
    """Whether the client has closed its connection, as far as the socket can tell without waiting.

    Under function/serve.py the front door flags the ASGI disconnect in the environ. gunicorn
    (`gunicorn.socket`) and werkzeug's server (`werkzeug.socket`) instead hand the request's socket
    to the application. Once the body has been read, nothing more arrives on it before we answer,
    unless the client closed it: then a non-blocking peek reads end-of-file (FIN) or fails (RST).
    Knative's queue-proxy closes its connection to us when its client goes away, so this sees that
    too. What it cannot see: a client that half-closes (shuts down only its sending side) looks
    gone; a pipelined next request, a TLS socket or an unknown server looks present; and
    `wsgi.input` says nothing at all (it reads end-of-body once Content-Length bytes are read).
    """
    flagged = request.environ.get(DISCONNECTED)  # served by function/serve.py: the front door watches
    if flagged is not None:
        return flagged.is_set()
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket) or not hasattr(select, "poll"):
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        events = poller.poll(0)
        if not events:
            return False
        if events[0][1] & (select.POLLHUP | select.POLLERR):
            return True
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset by the peer
        return True
    except ValueError:  # a socket closed under us
        return False


def _stop_if_gone(request: flask.Request, before: str) -> None:
    if client_gone(request):
        raise Problem(499, "client-closed-request", f"the client closed the connection before {before}")


def _fuse(rt: Runtime, request: flask.Request, refs: Refs, raw: dict[str, Any], output: Any,
          form: bool = False) -> flask.Response:
    """Check the output URI and options, then take a fusion slot, fetch the inputs and fuse.

    A client that has gone away is noticed before the slot is taken, before the fusion runs and
    before the answer is written (see `client_gone`); its request ends with 499 in the log."""
    if output is not None and not isinstance(output, str):
        raise Problem(400, "invalid-uri", "'output' must be a URI")
    out_uri = output_uri(rt, output, refs.values()) if output else None
    # Accept is about the answer: it picks the format only when the image is the answer
    options = parse_options(raw, accept=None if out_uri else request.accept_mimetypes,
                            output_uri=out_uri, form=form)
    fuser = rt.fuser()  # after the caller's mistakes: a bad request is a 400 even while not ready
    _stop_if_gone(request, "the fusion started")
    with rt.limiter.slot():
        result, timer = fuse_inputs(rt, fuser, refs, options, lambda: _stop_if_gone(request, "the fusion ran"))
        headers = fusion_headers(result, timer)
        _stop_if_gone(request, "the answer")
        if out_uri is None:
            return flask.Response(result.data, status=200, mimetype=result.media_type, headers=headers)
        write_output(rt, out_uri, result.data)
    body = {"output": out_uri, "media_type": result.media_type, "revision": rt.config.revision,
            **result.report.as_dict()}
    return json_response(body, headers=headers)
