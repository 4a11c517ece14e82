"""Turning what arrives on POST / into fusion jobs: CloudEvents (binary, structured, batch) and
storage notifications from GCS, S3, Azure and MinIO.

Each delivery becomes an `EventJob`: either a fusion to run, or a note that the event is ignored
(not an object creation, or one of our own outputs). Where the object is, per event type, follows
the README's list of events.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from cloudevents.http import CloudEvent, from_http

from .problems import Problem
from .tracing import STRUCTURED

log = logging.getLogger("facefusion.function")

FUSION_REQUESTED = "dev.facefusion.fusion.requested"
FUSION_COMPLETED = "dev.facefusion.fusion.completed"
SEGMENT_REQUESTED = "dev.facefusion.segment.requested"  # one segment of a video job (function/fanout.py)
DEAD_LETTER_EXTENSIONS = ("knativeerrorcode", "knativeerrordata", "knativeerrordest")
GCS_PREFIX = "google.cloud.storage.object.v1."
S3_PREFIX = "com.amazonaws.s3."
AZURE_PREFIX = "Microsoft.Storage."
DEFAULT_INPUT_TEMPLATES = {
    "gcs": "gs://{bucket}/{name}",
    "s3": "s3://{bucket}/{name}",
    "minio": "s3://{bucket}/{name}",
    "azure": "az://{bucket}/{name}",
}


def check_batch_size(count: int, what: str, limit: int) -> None:
    """A delivery with more than MAX_BATCH entries is refused whole (413), before any entry runs: one
    delivery must not hold the fusion slots for minutes. Eventing does not retry a 413."""
    if count > limit:
        raise Problem(413, "batch-too-large", f"{what} holds {count} entries; at most {limit} (MAX_BATCH) are "
                                              "taken in one delivery")


@dataclass
class StorageObject:
    provider: str  # gcs | s3 | minio | azure
    bucket: str
    name: str
    version: str  # generation, versionId, sequencer or eTag: one object version, one output
    source_face: str | None = None  # a source face named by the object's own metadata
    content_type: str | None = None  # as the notification declares it (GCS, Azure), for telling videos apart


@dataclass
class EventJob:
    """One unit of event work: a storage object or a fusion request to run, a reason to ignore the
    event, or the problem that makes it unusable (one malformed entry of a batch fails alone)."""

    event_id: str
    event_type: str
    source: str = ""
    storage: StorageObject | None = None
    request: dict[str, Any] | None = None  # the data of a fusion.requested event
    segment: Any = None  # the data of a segment.requested event
    # Knative's knativeerror* extensions, as the event carries them: a dead-lettered delivery has them, and
    # so does such an event replayed to POST / for recovery, which must be processed, not failed again
    knative_error: dict[str, Any] | None = None
    dead_letter: dict[str, Any] | None = None  # set only by the /dead-letter route: fail the job it names
    ignored: str = ""  # why nothing is to be done
    problem: Problem | None = None


def _metadata_source(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return None
    for key, value in meta.items():
        if key.lower().removeprefix("x-amz-meta-") in ("source-face", "source_face", "sourceface") and isinstance(value, str):
            return value
    return None


def _s3_record(record: Any, provider: str) -> tuple[str, StorageObject | None]:
    """(eventName, object) of one S3-style record (AWS, MinIO)."""
    if not isinstance(record, dict):
        raise Problem(400, "malformed-event", "an S3 record must be an object")
    name = str(record.get("eventName", ""))
    s3 = record.get("s3")
    if not isinstance(s3, dict) or not isinstance(s3.get("bucket"), dict) or not isinstance(s3.get("object"), dict):
        raise Problem(400, "malformed-event", "an S3 record needs s3.bucket and s3.object")
    obj = s3["object"]
    key = obj.get("key")
    bucket = s3["bucket"].get("name")
    if not isinstance(key, str) or not key or not isinstance(bucket, str) or not bucket:
        raise Problem(400, "malformed-event", "an S3 record needs a bucket name and an object key")
    # S3 URL-encodes keys in notifications (spaces as '+').
    key = unquote(key.replace("+", " "))
    version = str(obj.get("versionId") or obj.get("sequencer") or obj.get("eTag") or "")
    return name, StorageObject(provider, bucket, key, version, _metadata_source(obj.get("userMetadata")))


def _is_creation(event_name: str) -> bool:
    return "ObjectCreated" in event_name


def _gcs(ce_type: str, data: Any) -> StorageObject | str:
    if ce_type != GCS_PREFIX + "finalized":
        return f"{ce_type} is not an object creation"
    if not isinstance(data, dict) or not data.get("bucket") or not data.get("name"):
        raise Problem(400, "malformed-event", "a GCS event needs data.bucket and data.name")
    return StorageObject("gcs", str(data["bucket"]), str(data["name"]), str(data.get("generation") or data.get("etag") or ""),
                         _metadata_source(data.get("metadata")), _text(data.get("contentType")))


def _s3(ce_type: str, data: Any) -> StorageObject | str:
    if not _is_creation(ce_type):
        return f"{ce_type} is not an object creation"
    records = data.get("Records") if isinstance(data, dict) else None
    record = records[0] if isinstance(records, list) and records else data  # a whole notification, or one record
    obj = _s3_record(record, "s3")[1]
    assert obj is not None
    return obj


def _azure(ce_type: str, data: Any) -> StorageObject | str:
    if ce_type != AZURE_PREFIX + "BlobCreated":
        return f"{ce_type} is not a blob creation"
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise Problem(400, "malformed-event", "an Azure BlobCreated event needs data.url")
    container, _, blob = unquote(urlsplit(data["url"]).path).lstrip("/").partition("/")
    if not container or not blob:
        raise Problem(400, "malformed-event", "data.url does not name a container and a blob")
    return StorageObject("azure", container, blob, str(data.get("eTag") or data.get("sequencer") or ""),
                         content_type=_text(data.get("contentType")))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# One parser per storage provider, by CloudEvent type prefix: each returns the created object, or why
# the event is ignored (a delete, a metadata change), and raises a 400 problem for malformed data.
STORAGE_PARSERS: dict[str, Callable[[str, Any], StorageObject | str]] = {
    GCS_PREFIX: _gcs,
    S3_PREFIX: _s3,
    AZURE_PREFIX: _azure,
}


def _json_data(ce_type: str, data: Any) -> Any:
    if isinstance(data, (bytes, str)):
        try:
            return json.loads(data)
        except ValueError as exc:
            raise Problem(400, "malformed-event", f"{ce_type} event data is not JSON") from exc
    return data


def from_cloudevent(event: CloudEvent) -> EventJob:
    """The job of one parsed CloudEvent; raises a 400 problem when its data is malformed."""
    attrs = event.get_attributes()
    ce_type = str(attrs.get("type", ""))
    job = EventJob(event_id=str(attrs.get("id", "")), event_type=ce_type, source=str(attrs.get("source", "")))
    if any(name in attrs for name in DEAD_LETTER_EXTENSIONS):
        job.knative_error = {name: attrs[name] for name in DEAD_LETTER_EXTENSIONS if name in attrs}
    if ce_type == SEGMENT_REQUESTED:
        job.segment = _json_data(ce_type, event.get_data())
        return job
    if ce_type == FUSION_REQUESTED:
        data = _json_data(ce_type, event.get_data())
        if not isinstance(data, dict):
            raise Problem(400, "malformed-event", f"{FUSION_REQUESTED} needs a JSON object as data")
        job.request = data
        return job
    parser = next((fn for prefix, fn in STORAGE_PARSERS.items() if ce_type.startswith(prefix)), None)
    if parser is not None:
        found = parser(ce_type, _json_data(ce_type, event.get_data()))
        if isinstance(found, str):
            job.ignored = found
        else:
            job.storage = found
    elif ce_type == "Microsoft.EventGrid.SubscriptionValidationEvent":
        job.ignored = "Event Grid subscription validation (use the OPTIONS handshake with CloudEvents schema)"
    else:
        job.ignored = f"event type {ce_type} is not handled here"
    return job


def from_minio(body: dict, limit: int) -> list[EventJob]:
    """A MinIO webhook (or any plain S3 notification): `Records[]`, not a CloudEvent."""
    records = body.get("Records")
    if not isinstance(records, list):
        raise Problem(400, "malformed-event", "a storage notification needs a Records list")
    check_batch_size(len(records), "the notification's Records list", limit)
    provider = "minio" if "EventName" in body or any(
        isinstance(r, dict) and str(r.get("eventSource", "")).startswith("minio") for r in records) else "s3"
    jobs = []
    for i, record in enumerate(records):
        rid = ""
        if isinstance(record, dict) and isinstance(record.get("responseElements"), dict):
            rid = str(record["responseElements"].get("x-amz-request-id", ""))
        job = EventJob(event_id=rid or f"record-{i}", event_type="s3:unknown")
        try:
            name, obj = _s3_record(record, provider)
        except Problem as problem:
            job.problem = problem
            jobs.append(job)
            continue
        job.event_type = name or job.event_type
        if _is_creation(name):
            job.storage = obj
        else:
            job.ignored = f"{name} is not an object creation"
        jobs.append(job)
    return jobs


REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")


def parse_cloudevent(headers: dict[str, str], body: bytes) -> CloudEvent:
    try:
        return from_http(headers, body)
    except Exception as exc:  # the SDK raises several exception types for malformed input
        missing = _missing_attributes(headers, body)
        if missing:  # the SDK says "Failed to find specversion" whichever one is missing
            raise Problem(400, "malformed-event", f"not a valid CloudEvent: it lacks the required "
                                                  f"{', '.join(missing)}") from exc
        raise Problem(400, "malformed-event", f"not a valid CloudEvent: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _missing_attributes(headers: dict[str, str], body: bytes) -> list[str]:
    """The required context attributes a binary-mode (ce-* headers) or structured-mode event lacks, as the
    sender names them, or the mark of either mode where the request has neither; [] where that cannot be
    told (a structured body that is not a JSON object)."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "ce-specversion" in lower:
        return [f"ce-{name} header" for name in REQUIRED_ATTRIBUTES if not lower.get(f"ce-{name}")]
    if lower.get("content-type", "").split(";")[0].strip().lower() == STRUCTURED:
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):
            return []
        if isinstance(event, dict):
            return [f"'{name}' attribute" for name in REQUIRED_ATTRIBUTES if not event.get(name)]
        return []
    return [f"ce-specversion header (binary mode) or a Content-Type of {STRUCTURED} (structured mode)"]


def parse_batch(body: bytes | list[Any], limit: int) -> list[EventJob]:
    """Each entry of a batch on its own: a malformed entry is a job with its problem, the others run.
    More than `limit` (MAX_BATCH) entries are refused whole. `body` is the raw batch, or the array a
    caller already parsed (an Event Grid array posted as application/json)."""
    items = body
    if isinstance(body, (bytes, bytearray)):
        try:
            items = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise Problem(400, "malformed-event", "a CloudEvents batch must be a JSON array") from exc
    if not isinstance(items, list):
        raise Problem(400, "malformed-event", "a CloudEvents batch must be a JSON array")
    check_batch_size(len(items), "the batch", limit)
    entries = [_batch_entry(item) for item in items]
    # not one entry is a CloudEvent (`[1, 2]`, a JSON array posted by mistake): the request itself is
    # malformed, a 400 rather than a 200 whose every result failed. Events whose data is wrong keep
    # their results, each with its id.
    if entries and not any(is_event for _, is_event in entries):
        first = entries[0][0].problem
        assert first is not None
        raise Problem(400, "malformed-event", f"no entry of the batch is a valid CloudEvent; the first: {first.detail}")
    return [job for job, _ in entries]


def _batch_entry(item: Any) -> tuple[EventJob, bool]:
    """One batch entry's job (with its problem, if it has one) and whether the entry is a CloudEvent at all."""
    if not isinstance(item, dict):
        problem = Problem(400, "malformed-event", "each batch entry must be a structured CloudEvent object")
        return EventJob(event_id="", event_type="", problem=problem), False
    event_id, event_type = str(item.get("id", "")), str(item.get("type", ""))
    try:
        event = parse_cloudevent({"content-type": STRUCTURED}, json.dumps(item).encode())
    except Problem as problem:
        return EventJob(event_id=event_id, event_type=event_type, problem=problem), False
    try:
        return from_cloudevent(event), True
    except Problem as problem:
        return EventJob(event_id=event_id, event_type=event_type, problem=problem), True


def render_template(template: str, obj: StorageObject) -> str:
    """Fill {provider} {bucket} {name} {dir} {stem} {ext} of an input or output URI template."""
    directory, base = posixpath.split(obj.name)
    stem, ext = posixpath.splitext(base)
    try:
        return template.format(provider=obj.provider, bucket=obj.bucket, name=obj.name, dir=directory,
                               stem=stem, ext=ext.lstrip("."))
    except (KeyError, IndexError, ValueError) as exc:
        raise Problem(503, "misconfigured", f"URI template {template!r} is invalid: {exc}", retry_after=30) from exc


def input_uri(obj: StorageObject, template: str | None) -> str:
    return render_template(template or DEFAULT_INPUT_TEMPLATES[obj.provider], obj)
