"""Turning what arrives on POST / into fusion jobs: CloudEvents (binary, structured, batch) and
storage notifications from GCS, S3, Azure and MinIO.

Each delivery becomes an `EventJob`: either a fusion to run, or a note that the event is ignored
(not an object creation, or one of our own outputs). Where the object is, per event type, follows
DESIGN.md's Events table.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from cloudevents.http import CloudEvent, from_http

from .problems import Problem

FUSION_REQUESTED = "dev.facefusion.fusion.requested"
FUSION_COMPLETED = "dev.facefusion.fusion.completed"
FUSION_FAILED = "dev.facefusion.fusion.failed"
GCS_PREFIX = "google.cloud.storage.object.v1."
S3_PREFIX = "com.amazonaws.s3."
AZURE_PREFIX = "Microsoft.Storage."
DEFAULT_INPUT_TEMPLATES = {
    "gcs": "gs://{bucket}/{name}",
    "s3": "s3://{bucket}/{name}",
    "minio": "s3://{bucket}/{name}",
    "azure": "az://{bucket}/{name}",
}


@dataclass
class StorageObject:
    provider: str  # gcs | s3 | minio | azure
    bucket: str
    name: str
    version: str  # generation, versionId, sequencer or eTag: one object version, one output
    source_face: str | None = None  # a source face named by the object's own metadata


@dataclass
class EventJob:
    """One unit of event work."""

    event_id: str
    event_type: str
    source: str = ""
    storage: StorageObject | None = None
    request: dict[str, Any] | None = None  # the data of a fusion.requested event
    ignored: str = ""  # why nothing is to be done
    attributes: dict[str, Any] = field(default_factory=dict)


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


def from_cloudevent(event: CloudEvent) -> EventJob:
    attrs = dict(event.get_attributes())
    ce_type = str(attrs.get("type", ""))
    job = EventJob(event_id=str(attrs.get("id", "")), event_type=ce_type, source=str(attrs.get("source", "")),
                   attributes=attrs)
    data = event.get_data()
    if isinstance(data, (bytes, str)) and ce_type.startswith((GCS_PREFIX, S3_PREFIX, AZURE_PREFIX, "dev.facefusion.")):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise Problem(400, "malformed-event", f"{ce_type} event data is not JSON") from exc
    if ce_type == FUSION_REQUESTED:
        if not isinstance(data, dict):
            raise Problem(400, "malformed-event", f"{FUSION_REQUESTED} needs a JSON object as data")
        job.request = data
    elif ce_type.startswith(GCS_PREFIX):
        if ce_type != GCS_PREFIX + "finalized":
            job.ignored = f"{ce_type} is not an object creation"
        elif not isinstance(data, dict) or not data.get("bucket") or not data.get("name"):
            raise Problem(400, "malformed-event", "a GCS event needs data.bucket and data.name")
        else:
            job.storage = StorageObject("gcs", str(data["bucket"]), str(data["name"]),
                                        str(data.get("generation") or data.get("etag") or ""),
                                        _metadata_source(data.get("metadata")))
    elif ce_type.startswith(S3_PREFIX):
        if not _is_creation(ce_type):
            job.ignored = f"{ce_type} is not an object creation"
        else:
            record = data["Records"][0] if isinstance(data, dict) and isinstance(data.get("Records"), list) and data["Records"] else data
            _, job.storage = _s3_record(record, "s3")
    elif ce_type.startswith(AZURE_PREFIX):
        if ce_type != AZURE_PREFIX + "BlobCreated":
            job.ignored = f"{ce_type} is not a blob creation"
        elif not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise Problem(400, "malformed-event", "an Azure BlobCreated event needs data.url")
        else:
            parts = urlsplit(data["url"])
            container, _, blob = unquote(parts.path).lstrip("/").partition("/")
            if not container or not blob:
                raise Problem(400, "malformed-event", "data.url does not name a container and a blob")
            job.storage = StorageObject("azure", container, blob, str(data.get("eTag") or data.get("sequencer") or ""))
    elif ce_type == "Microsoft.EventGrid.SubscriptionValidationEvent":
        job.ignored = "Event Grid subscription validation (use the OPTIONS handshake with CloudEvents schema)"
    else:
        job.ignored = f"event type {ce_type} is not handled here"
    return job


def from_minio(body: dict) -> list[EventJob]:
    """A MinIO webhook (or any plain S3 notification): `Records[]`, not a CloudEvent."""
    records = body.get("Records")
    if not isinstance(records, list):
        raise Problem(400, "malformed-event", "a storage notification needs a Records list")
    provider = "minio" if "EventName" in body or any(
        isinstance(r, dict) and str(r.get("eventSource", "")).startswith("minio") for r in records) else "s3"
    jobs = []
    for i, record in enumerate(records):
        name, obj = _s3_record(record, provider)
        rid = ""
        if isinstance(record, dict) and isinstance(record.get("responseElements"), dict):
            rid = str(record["responseElements"].get("x-amz-request-id", ""))
        job = EventJob(event_id=rid or f"record-{i}", event_type=name or "s3:unknown", storage=obj)
        if not _is_creation(name):
            job.ignored, job.storage = f"{name} is not an object creation", None
        jobs.append(job)
    return jobs


def parse_cloudevent(headers: dict[str, str], body: bytes) -> CloudEvent:
    try:
        return from_http(headers, body)
    except Exception as exc:  # the SDK raises several exception types for malformed input
        raise Problem(400, "malformed-event", f"not a valid CloudEvent: {type(exc).__name__}: {str(exc)[:200]}") from exc


def parse_batch(body: bytes) -> list[CloudEvent | Problem]:
    """Each entry of a batch on its own: a malformed entry fails alone, the others still run."""
    try:
        items = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Problem(400, "malformed-event", "a CloudEvents batch must be a JSON array") from exc
    if not isinstance(items, list):
        raise Problem(400, "malformed-event", "a CloudEvents batch must be a JSON array")
    parsed: list[CloudEvent | Problem] = []
    for item in items:
        if not isinstance(item, dict):
            parsed.append(Problem(400, "malformed-event", "each batch entry must be a structured CloudEvent object"))
            continue
        try:
            parsed.append(parse_cloudevent({"content-type": "application/cloudevents+json"}, json.dumps(item).encode()))
        except Problem as problem:
            problem.event_id = str(item.get("id", ""))
            parsed.append(problem)
    return parsed


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
