"""OpenAPI 3.1 description of the HTTP surface, served at GET /openapi.json and checked by tests."""

from __future__ import annotations

from pipeline.sources import MAX_SOURCES as _MAX_SOURCES

from . import options, video_options
from .video_media import MEDIA_TYPES

_problem = {"$ref": "#/components/responses/Problem"}
_not_allowed = {"$ref": "#/components/responses/MethodNotAllowed"}
_fusion_headers = {
    name: {"$ref": f"#/components/headers/{name}"}
    for name in ("Server-Timing", "X-Faces-Swapped", "X-Faces-Found", "X-Model-Version", "X-Revision")
}
# Generated from the one option table that also checks every request and event (function/options.py).
_options_props = {**options.properties(), **video_options.properties()}  # the video ones: for a video target
_video_media = {media: {} for media in sorted(set(MEDIA_TYPES.values()))}
_image_ref = {"oneOf": [
    {"type": "string", "description": "a URI under ALLOWED_URI_PREFIXES, a data: URL or base64"},
    {"type": "object", "properties": {"uri": {"type": "string"}, "base64": {"type": "string"}}},
]}
# `source`: one image, or up to 8 whose largest faces are averaged (repeated multipart files, a JSON array)
_source_files = {"oneOf": [{"type": "string", "format": "binary"},
                           {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                            "maxItems": _MAX_SOURCES}],
                 "description": f"one image, or the field repeated up to {_MAX_SOURCES} times: the largest face of each is "
                                "embedded and the embeddings averaged; an image without a face is skipped"}
_source_ref = {"oneOf": [_image_ref, {"type": "array", "items": _image_ref, "minItems": 1, "maxItems": _MAX_SOURCES}],
               "description": f"one image, or an array of up to {_MAX_SOURCES} whose largest faces' embeddings are averaged"}
# JSON bodies: options in `options` or beside the images (each in one place); nothing else is accepted
_json_options = {**options.schema(), "properties": {**_options_props, "reference": _image_ref}}

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {"title": "facefusion-fn", "version": "1",
             "description": "Face fusion as a serverless function. Errors are RFC 9457 problem documents."},
    "paths": {
        "/": {
            "get": {
                "summary": "The demo page, for a browser: only when Accept prefers text/html (others get 405)",
                "responses": {
                    "200": {"description": "one self-contained HTML page that fuses through POST /",
                            "content": {"text/html": {}}},
                    "401": {"description": "without a valid token: an HTML form that asks for it and loads the page "
                                           "(a problem document when Accept does not prefer text/html)",
                            "content": {"text/html": {},
                                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
                    "405": _not_allowed,
                },
            },
            "post": {
                "summary": "Fuse faces (multipart or JSON), or deliver a CloudEvent / storage notification",
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {
                        "type": "object", "required": ["source", "target"], "additionalProperties": False,
                        "description": "option fields are text: integers and numbers as decimals, booleans as "
                                       "true/false/1/0/yes/no/on/off; an empty field is not given",
                        "properties": {
                            "source": _source_files,
                            "target": {"type": "string", "format": "binary",
                                       "description": "an image, or a video clip (video/* part or MP4/MOV/Matroska "
                                                      "bytes) of at most VIDEO_MAX_SYNC_SECONDS"},
                            "reference": {"type": "string", "format": "binary",
                                          "description": "with faces=reference only (else 400)"},
                            "output": {"type": "string"}, **_options_props}}},
                    "application/json": {"schema": {"oneOf": [
                        {"type": "object", "required": ["source", "target"], "additionalProperties": False, "properties": {
                            "source": _source_ref, "target": _image_ref,
                            "reference": {**_image_ref, "description": "with faces=reference only (else 400)"},
                            "output": {"type": "string"}, "options": _json_options, **_options_props}},
                        {"type": "object", "required": ["Records"], "description": "MinIO / S3 notification"},
                        {"type": "array", "description": "Event Grid CloudEvents-schema batch"},
                    ]}},
                    "application/cloudevents+json": {"schema": {"type": "object"}},
                    "application/cloudevents-batch+json": {"schema": {"type": "array"}},
                }},
                "responses": {
                    "200": {"description": "the fused image or clip (a video target: X-Frames, X-Frames-Swapped, "
                                           "X-Frames-Without-Face instead of the face counts); a JSON report when "
                                           "`output` was given; a reply CloudEvent (binary mode) for a completed "
                                           "event; batch results",
                            "headers": _fusion_headers,
                            "content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}, **_video_media,
                                        "application/json": {"schema": {"type": "object"}}}},
                    "202": {"description": "event accepted and done (or ignored, or a duplicate), no reply event; "
                                           "no body. A video job (planned, or already planned or done) carries "
                                           "`Location: /jobs/<id>`",
                            "headers": {"Location": {"schema": {"type": "string"},
                                                     "description": "with a video job: its status URL"}}},
                    **{str(code): _problem for code in (400, 401, 403, 406, 413, 415, 422, 429, 503, 504)},
                    "405": _not_allowed,
                },
            },
            "options": {
                "summary": "CloudEvents webhook abuse-protection handshake",
                "parameters": [{"name": "WebHook-Request-Origin", "in": "header", "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "origin allowed", "headers": {
                        "WebHook-Allowed-Origin": {"schema": {"type": "string"}},
                        "WebHook-Allowed-Rate": {"schema": {"type": "string"}}}},
                    "204": {"description": "no handshake requested", "headers": {
                        "Allow": {"schema": {"type": "string"}}}},
                },
            },
        },
        "/jobs/{id}": {"get": {
            "summary": "a video job's status (the fan-out: storage events and fusion.requested with a video)",
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{24}$"}}],
            "responses": {
                "200": {"description": "the job", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/VideoJob"}}}},
                **{str(code): _problem for code in (401, 404, 503, 504)}}}},
        "/dead-letter": {"post": {
            "summary": "Knative deadLetterSink of the segment Trigger: a dead-lettered segment event (with the "
                       "knativeerrorcode / knativeerrordata extensions) fails its job",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}},
                                                          "application/cloudevents+json": {"schema": {"type": "object"}}}},
            "responses": {"202": {"description": "recorded (or ignored: the segment was done after all)"},
                          **{str(code): _problem for code in (400, 401, 422, 503)}}}},
        "/healthz": {"get": {"summary": "liveness", "responses": {
            "200": {"description": "serving", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/readyz": {"get": {"summary": "readiness: models loaded and warmed", "responses": {
            "200": {"description": "ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}},
            "503": {"description": "not ready; `reason` says why after a failure",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "text exposition format", "content": {"text/plain": {}}}, "401": _problem}}},
        "/openapi.json": {"get": {"summary": "this document", "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}, "401": _problem}}},
    },
    "components": {
        "schemas": {
            "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "instance": {"type": "string"},
                "image": {"type": "string", "enum": ["source", "target", "reference"],
                          "description": "the input an image or face error is about"}}},
            "VideoJob": {"type": "object", "required": ["id", "state", "segments", "frames", "output"], "properties": {
                "id": {"type": "string"}, "input": {"type": "string"}, "output": {"type": "string"},
                "state": {"type": "string", "enum": ["planned", "running", "stitching", "done", "failed"]},
                "segments": {"type": "object", "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}}},
                "frames": {"type": "object", "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}}},
                "frames_per_second": {"type": "number", "description": "frames done per second since the job was planned"},
                "fusion_frames_per_second": {"type": "number", "description": "frames per second of fusion, summed "
                                                                              "over the segments done"},
                "created_at": {"type": "number"}, "finished_at": {"type": "number"}, "duration_s": {"type": "number"},
                "error": {"type": "object", "description": "a failed job: the segment, the last status and the reason",
                          "properties": {"segment": {"type": "integer"}, "status": {"type": ["integer", "null"]},
                                         "reason": {"type": "string"}, "failed_at": {"type": "number"}}}}},
            "Readiness": {"type": "object", "required": ["status"], "properties": {
                "status": {"type": "string", "enum": ["starting", "loading", "warming", "ready", "failed"]},
                "reason": {"type": "string"}, "timings_s": {"type": "object"}, "revision": {"type": "string"},
                "model_version": {"type": "string"}}},
        },
        "responses": {"Problem": {"description": "an RFC 9457 problem", "headers": {
            "Retry-After": {"schema": {"type": "integer"}, "description": "with 429 and 503"}},
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
            "MethodNotAllowed": {"description": "the method is not served on this path", "headers": {
                "Allow": {"schema": {"type": "string"}, "description": "the methods this path serves"}},
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}},
        "headers": {
            "Server-Timing": {"schema": {"type": "string"}, "description": "receive, queue, handler (the front door's part), then the stages that "
                                                                 "ran: decode, detect, embed, swap, mask, paste, enhance, encode"},
            "X-Faces-Swapped": {"schema": {"type": "integer"}},
            "X-Faces-Found": {"schema": {"type": "integer"}},
            "X-Model-Version": {"schema": {"type": "string"}},
            "X-Revision": {"schema": {"type": "string"}, "description": "K_REVISION of the serving revision"},
        },
    },
}
