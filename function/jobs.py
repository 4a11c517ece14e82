"""Event work: storage and fusion-request jobs, completion markers, reply events, the batch loop.

Delivery is at least once, so every job is idempotent: after the output is written atomically, a
marker `<output>.facefusion.json` records the input version it was made from, and a redelivery that
finds it is answered without a second fusion. While a job fuses, a lease `<output>.facefusion.lease`
makes a concurrent delivery of the same work answer 429 (retried, then a duplicate) instead of fusing
twice. Objects under OUTPUT_URI's fixed prefix, markers and leases are our own outputs and are
ignored, so a trigger on a bucket that is input and output cannot loop.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import flask
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from . import events, fanout, leases, observe, storage, video_media
from .fusion import parse_options
from .inputs import (
    MARKER_SUFFIX,
    Refs,
    fuse_inputs,
    image_ref,
    output_uri,
    reserved_name,
    source_refs,
    uri_ref,
    write_output,
)
from .problems import Problem, as_problem, internal_error
from .reply import json_response
from .runtime import Runtime

log = logging.getLogger("facefusion.function")


def _own_output(rt: Runtime, in_uri: str) -> bool:
    return reserved_name(in_uri) or any(in_uri.startswith(prefix) for prefix in rt.own_prefixes)


def _already_done(rt: Runtime, out_uri: str, identity: str) -> bool:
    """The marker beside the output names the input version it was made from."""
    marker = storage.read_json(out_uri + MARKER_SUFFIX, rt.config.storage_timeout_s)
    return bool(marker) and marker.get("input") == identity and storage.exists(out_uri, rt.config.storage_timeout_s)


def _fuse_to_uri(rt: Runtime, refs: Refs, out_uri: str, raw: dict[str, Any], identity: str,
                 job: events.EventJob) -> dict[str, Any]:
    """Fuse checked inputs into `out_uri`, then write the marker that makes a redelivery a duplicate.

    The output's lease keeps a concurrent delivery of the same event from fusing too: it gets a
    retryable 429 and, redelivered later, finds the marker."""
    options = parse_options(raw, output_uri=out_uri)
    fuser = rt.fuser()  # after the request's own mistakes: a bad event is a 400, not retried while not ready
    timeout = rt.config.storage_timeout_s
    owner = leases.claim(out_uri, rt.config.lease_ttl_s, timeout)
    try:
        if _already_done(rt, out_uri, identity):  # finished between our first look and the claim
            return {"status": "duplicate", "output": out_uri}
        return _fuse_claimed(rt, fuser, refs, out_uri, options, identity, job)
    finally:
        leases.release(out_uri, owner, timeout)


def _fuse_claimed(rt: Runtime, fuser: Any, refs: Refs, out_uri: str, options: Any, identity: str,
                  job: events.EventJob) -> dict[str, Any]:
    timeout = rt.config.storage_timeout_s
    with rt.limiter.slot():
        result, _ = fuse_inputs(rt, fuser, refs, options)
        write_output(rt, out_uri, result.data)
        report = result.report
        marker = {"input": identity, "event_id": job.event_id, "revision": rt.config.revision,
                  "model_version": report.model_version, "faces_swapped": report.faces_swapped, "written_at": time.time()}
        storage.write_atomic(out_uri + MARKER_SUFFIX, json.dumps(marker).encode(), timeout)
    return {"status": "done", "output": out_uri, "faces_found": report.faces_found, "faces_swapped": report.faces_swapped,
            "model_version": report.model_version, "timings_ms": report.timings_ms}


def _storage_job(rt: Runtime, job: events.EventJob) -> dict[str, Any]:
    obj = job.storage
    assert obj is not None
    target = uri_ref(rt, events.input_uri(obj, rt.config.input_uri_template))
    assert target.uri is not None
    if _own_output(rt, target.uri):
        return {"status": "ignored", "reason": "the object is one of this function's outputs"}
    if not rt.config.output_uri:
        raise Problem(503, "misconfigured", "OUTPUT_URI is not set, so storage events have nowhere to go", retry_after=30)
    source_uri = obj.source_face or rt.config.source_face_uri
    if not source_uri:
        # the operator's setting, like OUTPUT_URI: retried, so the event survives until it is fixed
        raise Problem(503, "misconfigured", "the object names no source face and SOURCE_FACE_URI is not set",
                      retry_after=30)
    source = uri_ref(rt, source_uri)
    identity = f"{target.uri}#{obj.version}"
    if video_media.is_video_name(obj.name) or video_media.is_video_type(obj.content_type):
        out_uri = output_uri(rt, events.render_template(rt.config.video_output_uri or "", obj), (source, target),
                             operator=True, extensions=video_media.OUTPUT_EXTENSIONS)
        return fanout.start_job(rt, identity=identity, target_uri=target.uri, source_uri=source.uri or "",
                                output_uri=out_uri, raw_options={}, event_id=job.event_id)
    out_uri = output_uri(rt, events.render_template(rt.config.output_uri, obj), (source, target), operator=True)
    if _already_done(rt, out_uri, identity):
        return {"status": "duplicate", "output": out_uri}
    return _fuse_to_uri(rt, {"source": source, "target": target}, out_uri, {}, identity, job)


def _request_job(rt: Runtime, job: events.EventJob) -> dict[str, Any]:
    data = job.request or {}
    for name in ("source", "target", "output"):
        if not isinstance(data.get(name), str) and not (name == "source" and isinstance(data.get(name), list)):
            raise Problem(400, "malformed-event", f"{events.FUSION_REQUESTED} data needs a '{name}' URI"
                          + (" (or an array of URIs)" if name == "source" else ""))
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise Problem(400, "malformed-event", f"{events.FUSION_REQUESTED} data.options must be an object")
    refs: Refs = {"source": source_refs(rt, data["source"], lambda rt, uri, _: uri_ref(rt, uri)),
                  "target": uri_ref(rt, data["target"])}
    # a video target (by its name, or, for a name without an extension, by the video output asked for):
    # the fan-out, answered 202 at once
    if video_media.is_video_name(refs["target"].uri) or video_media.is_video_name(data["output"]):
        out_uri = output_uri(rt, data["output"], refs.values(), extensions=video_media.OUTPUT_EXTENSIONS)
        sources = refs["source"]
        source_uri = [ref.uri or "" for ref in sources] if isinstance(sources, list) else sources.uri or ""
        return fanout.start_job(rt, identity=f"{refs['target'].uri}#{job.event_id}", target_uri=refs["target"].uri or "",
                                source_uri=source_uri, output_uri=out_uri, raw_options=options,
                                event_id=job.event_id)
    if options.get("reference") is not None:
        refs["reference"] = image_ref(rt, options["reference"], "reference")
    out_uri = output_uri(rt, data["output"], refs.values())  # every URI is checked before anything is read
    identity = f"{refs['target'].uri}#{job.event_id}"  # type: ignore[union-attr]
    if _already_done(rt, out_uri, identity):
        return {"status": "duplicate", "output": out_uri}
    return _fuse_to_uri(rt, refs, out_uri, options, identity, job)


@observe.event_job  # outcomes by event type, the job's span
def run_job(rt: Runtime, job: events.EventJob) -> dict[str, Any]:
    """The outcome of one job; raises the problem of a job that failed."""
    base = {"id": job.event_id, "type": job.event_type}
    if job.problem is not None:
        raise job.problem
    if job.ignored:
        return {**base, "status": "ignored", "reason": job.ignored}
    if job.dead_letter is not None:  # Eventing gave up on this delivery (a deadLetterSink pointing here)
        return {**base, **_dead_letter(rt, job)}
    if job.segment is not None:
        return {**base, **fanout.run_segment(rt, job.segment)}
    if job.request is not None:
        return {**base, **_request_job(rt, job)}
    return {**base, **_storage_job(rt, job)}


def _dead_letter(rt: Runtime, job: events.EventJob) -> dict[str, Any]:
    """A dead-lettered segment fails its job, naming the segment and the last answer's reason; any other
    dead-lettered event is only logged (its sender learns nothing more from us)."""
    status, reason = fanout.dead_letter_reason(job.dead_letter or {})
    if job.event_type == events.SEGMENT_REQUESTED:
        return fanout.fail_segment(rt, job.segment, status, reason)
    log.warning("dead-lettered %s event %s: %s %s", job.event_type, job.event_id, status, reason)
    return {"status": "ignored", "reason": "a dead-lettered event that is not a video segment"}


def reply(rt: Runtime, job: events.EventJob, outcome: dict[str, Any]) -> flask.Response:
    """202 for work without a reply (with `Location: /jobs/<id>` for a video job accepted or already
    done); a `fusion.completed` reply event (binary mode) for a done image fusion."""
    if "job" in outcome:
        return flask.Response(status=202, headers={"Location": f"/jobs/{outcome['job']}"})
    if outcome["status"] != "done" or not rt.config.reply_events:
        return flask.Response(status=202)
    event = CloudEvent({
        "type": events.FUSION_COMPLETED,
        "source": f"/facefusion/{rt.config.service}/{rt.config.revision}",
        "id": str(uuid.uuid4()),
        "subject": outcome["output"],
        "datacontenttype": "application/json",
        "causationid": job.event_id,
        **observe.event_extensions(),  # traceparent/tracestate: the reply continues the trace
    }, {**{k: v for k, v in outcome.items() if k not in ("id", "type", "status")}, "revision": rt.config.revision,
        "input_event": {"id": job.event_id, "type": job.event_type, "source": job.source}})
    headers, body = to_binary(event)
    return flask.Response(body, status=200, headers=headers)


def run_many(rt: Runtime, jobs: list[events.EventJob]) -> flask.Response:
    """A batch, job by job: 200 with a result each, or the worst retryable status so that Eventing
    redelivers (what was done is a duplicate next time)."""
    if not jobs:
        return flask.Response(status=202)
    outcomes, worst = [], None
    for job in jobs:
        try:
            outcomes.append(run_job(rt, job))
        except Exception as exc:
            problem = as_problem(exc)
            if problem is None:  # a bug fails its own entry (retryably), never the entries after it
                log.exception("unhandled error in batch entry %s", job.event_id)
                problem = internal_error()
            outcomes.append({"id": job.event_id, "type": job.event_type, "status": "failed", "error": problem.as_dict()})
            if problem.retryable and (worst is None or problem.status > worst.status):
                worst = problem
    body = {"results": outcomes}
    if worst is not None:
        return json_response(body, worst.status, {"Retry-After": str(worst.retry_after or 1)})
    return json_response(body)
