"""The video fan-out: plan a clip into segments, fuse each segment once, stitch once.

    start_job      probe the clip, plan segments at keyframes, write the job document, then hand the
                   segments out: one `dev.facefusion.segment.requested` event each to K_SINK, or (no
                   K_SINK) to this process's local runner (video_runner.py)
    run_segment    one segment delivery: fuse its frame range into a part, published atomically, with
                   its record; a redelivery or a duplicate finds the record and fuses nothing
    finish         after every delivery: when all parts are there, the one delivery that creates the
                   stitch claim stitches (stream copy) with the original audio, publishes the output,
                   emits `dev.facefusion.fusion.completed` and marks the job done
    dead_letter    a segment delivery Eventing gave up on: the job is failed, naming segment and reason

Why it is safe under at-least-once delivery, concurrent pods and killed pods (docs/video.md):
- a part is fused under a lease on its URI (leases.py), so two deliveries of one segment never fuse at
  once; the record is written after the part, so a record means a complete part;
- the stitch claim is an exclusive create (storage.write_exclusive); inside it the job's done record
  is checked again, so a claim taken after the stitcher finished stitches nothing; a claimant that
  dies leaves a claim that expires (LEASE_TTL_S, or at once when its process on this host is gone), so
  a redelivery finishes the job; an output already published for this job (its marker names the job)
  is not stitched again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.errors import UnsupportedVideoOutput
from pipeline.sources import source_key
from pipeline.timing import StageTimer
from pipeline.video import Segment, VideoInfo, VideoOptions, fuse_video, plan_segments, probe, stitch
from pipeline.video.output import CODECS_BY_CONTAINER, check_audio, codec_for, container_of

from . import leases, sink, storage, video_files, video_options
from .events import FUSION_COMPLETED, SEGMENT_REQUESTED
from .inputs import MARKER_SUFFIX, about, about_clip, uri_ref
from .problems import Problem
from .runtime import Runtime
from .video_media import extension
from .video_store import JobStore

log = logging.getLogger("facefusion.fanout")
INPUTS = video_files.InputCache()


def store(rt: Runtime) -> JobStore:
    root = rt.config.video_jobs_uri
    if not root:
        raise Problem(503, "misconfigured", "video jobs need VIDEO_JOBS_URI (or OUTPUT_URI, whose folder holds them "
                                            "by default)", retry_after=30)
    return JobStore(root if root.endswith("/") else root + "/", rt.config.storage_timeout_s)


def job_id_for(identity: str) -> str:
    """One input version (or one request event) is one job: a redelivery finds the job it started."""
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


# -- planning ------------------------------------------------------------------------------------------
def start_job(rt: Runtime, *, identity: str, target_uri: str, source_uri: str | list[str], output_uri: str,
              raw_options: dict[str, Any], event_id: str) -> dict[str, Any]:
    """Plan a job and hand its segments out; a job already planned for this identity is handed out
    again (segments done are skipped), a finished one is a duplicate. Bad input is a 4xx before anything
    is written."""
    jobs = store(rt)
    job_id = job_id_for(identity)
    existing = jobs.job(job_id)
    if existing is not None:
        if jobs.read(jobs.done_uri(job_id)) is not None:
            return {"status": "duplicate", "job": job_id, "output": existing["output"]}
        if jobs.read(jobs.failed_uri(job_id)) is not None:  # GET /jobs/<id> says which segment and why
            return {"status": "ignored", "reason": "the job has failed", "job": job_id, "output": existing["output"]}
        dispatch(rt, jobs, existing)
        return {"status": "accepted", "job": job_id, "output": existing["output"], "segments": len(existing["segments"])}
    checked = video_options.build(raw_options)  # bad options: a 400 before anything is read
    if raw_options.get("reference") is not None and not isinstance(raw_options["reference"], str):
        raise Problem(400, "invalid-options", "a video job's 'reference' must be a URI", image="reference")
    if raw_options.get("reference"):
        raw_options = {**raw_options, "reference": rt.allow.check(raw_options["reference"])}
    fuser = rt.fuser()  # not ready: a retryable 503 before anything is read
    limits = rt.config.video_limits
    fuser.check_options(checked.fuse)  # what the model set cannot serve: a 400 now, not a failed segment later
    codec = part_codec(output_uri, checked)  # an encoder or crf the output cannot take, likewise
    started = time.perf_counter()
    with INPUTS.get(identity, target_uri, extension(target_uri) or ".mp4", rt.config.max_video_bytes,
                    rt.config.storage_timeout_s) as local, about("target"):
        info = probe(local, limits)
    check_audio(container_of(output_uri), info.audio_codec)  # an audio stream the output's container cannot hold
    sources = _read_sources(rt, source_uri)
    with about("source"):  # a source without a face is a 422 now, not a failed segment later (and is cached)
        fuser.source_face([fuser.decode(data, "source") for data in sources], StageTimer(),
                          source_key(sources), checked.fuse.swapper,
                          checked.fuse.detector_angles)
    segments = plan_segments(info, limits.segment_seconds)
    doc = {"id": job_id, "identity": identity, "input": target_uri, "source": source_uri, "output": output_uri,
           "options": raw_options, "codec": codec, "event_id": event_id, "created_at": time.time(), "revision": rt.config.revision,
           "info": info.as_dict(), "frames": int(info.frames), "fps": float(info.fps), "duration_s": float(info.duration_s),
           "has_audio": bool(info.has_audio), "segments": [s.as_dict() for s in segments],
           "plan_seconds": round(time.perf_counter() - started, 3)}  # fetch, probe and plan: the fan-out's overhead
    if not jobs.create(job_id, doc):  # planned at the same moment by another delivery
        doc = jobs.job(job_id) or doc
    dispatch(rt, jobs, doc)
    return {"status": "accepted", "job": job_id, "output": output_uri, "segments": len(segments)}


def part_codec(output_uri: str, options: VideoOptions) -> str:
    """The one encoder of every part of a job, chosen at planning. Parts are .mp4 files stitched by
    stream copy, so the fan-out takes the codecs MP4 holds (H.264, H.265, NVENC); a VP9 output (.webm,
    or codec libvpx-vp9) is for direct requests."""
    codec = codec_for(output_uri, options)
    if codec not in CODECS_BY_CONTAINER["mp4"]:
        raise UnsupportedVideoOutput(f"the fan-out writes H.264 or H.265 (to .mp4, .mov or .mkv), not {codec}; "
                                     "send a clip of at most VIDEO_MAX_SYNC_SECONDS directly for a .webm output")
    return codec


@contextmanager
def _encoder_here(codec: str | None) -> Iterator[None]:
    """A job planned on a pod that opened NVENC, fused on one that cannot: retry elsewhere (503), for
    the request itself was fine."""
    try:
        yield
    except UnsupportedVideoOutput as exc:
        if codec and "nvenc" in codec:
            raise Problem(503, "encoder-unavailable", f"this pod cannot encode the job's {codec}: {exc.message}",
                          retry_after=5) from exc
        raise


def _read_sources(rt: Runtime, source: str | list[str]) -> list[bytes]:
    """The job's source image or images (several are averaged), each read behind the allow-list."""
    uris = source if isinstance(source, list) else [source]
    with about("source"):
        return [uri_ref(rt, uri).fetch(rt) for uri in uris]


def dispatch(rt: Runtime, jobs: JobStore, doc: dict) -> None:
    """Hand out the segments that have no part yet: events to K_SINK, else the local runner."""
    if not rt.config.k_sink:
        from .video_runner import RUNNER

        RUNNER.submit(rt, doc["id"])
        return
    done = jobs.part_indices(doc["id"])
    for seg in doc["segments"]:
        if seg["index"] not in done:
            emit(rt, {"type": SEGMENT_REQUESTED, "id": f"{doc['id']}-segment-{seg['index']:04d}",
                      "subject": doc["id"]}, {"job": doc["id"], "segment": seg["index"]})


def emit(rt: Runtime, attributes: dict[str, Any], data: Any) -> None:
    sink.send(rt.config.k_sink or "", {"source": f"/facefusion/{rt.config.service}/{rt.config.revision}",
                                       "datacontenttype": "application/json", **attributes},
              data, rt.config.sink_retries, sink.overrides(rt.config.ce_overrides))


# -- one segment ---------------------------------------------------------------------------------------
def _segment_args(jobs: JobStore, data: Any) -> tuple[dict, int]:
    if not isinstance(data, dict) or not isinstance(data.get("job"), str) or not isinstance(data.get("segment"), int) \
            or isinstance(data.get("segment"), bool):
        raise Problem(400, "malformed-event", f"{SEGMENT_REQUESTED} data needs 'job' (an id) and 'segment' (an integer)")
    job = jobs.job(data["job"])
    if job is None:
        raise Problem(422, "job-not-found", f"no video job {data['job'][:40]!r}")
    if not 0 <= data["segment"] < len(job["segments"]):
        raise Problem(400, "malformed-event", f"job {job['id']} has no segment {data['segment']}")
    return job, data["segment"]


def run_segment(rt: Runtime, data: Any) -> dict[str, Any]:
    """One delivery of a segment event: fuse the part unless it is done, then try to finish the job."""
    jobs = store(rt)
    job, index = _segment_args(jobs, data)
    base = {"job": job["id"], "segment": index}
    if jobs.read(jobs.done_uri(job["id"])) is not None:
        return {**base, "status": "duplicate", "output": job["output"]}
    if jobs.read(jobs.failed_uri(job["id"])) is not None:
        return {**base, "status": "ignored", "reason": "the job has failed"}
    if jobs.read(jobs.part_record_uri(job["id"], index)) is None:
        part_uri = jobs.part_uri(job["id"], index)
        with leases.held(part_uri, rt.config.lease_ttl_s, rt.config.storage_timeout_s):  # renewed while it fuses
            if jobs.read(jobs.part_record_uri(job["id"], index)) is None:  # done between our look and the claim
                record = _fuse_part(rt, jobs, job, index, part_uri)
                base.update(frames=record["frames"], seconds=record["seconds"])
                status = "done"
            else:
                status = "duplicate"
    else:
        status = "duplicate"
    finished = finish(rt, jobs, job)
    return {**base, "status": status, "stitch": finished}


def _fuse_part(rt: Runtime, jobs: JobStore, job: dict, index: int, part_uri: str) -> dict[str, Any]:
    fuser = rt.fuser()
    seg = Segment.from_dict(job["segments"][index])
    # every part with the job's encoder (chosen once, at planning), or the stitcher could not join them
    options = replace(video_options.build(job["options"], accepted=True), codec=job.get("codec"))
    with rt.limiter.slot():
        source = _read_sources(rt, job["source"])
        if job["options"].get("reference"):
            with about("reference"):
                options.fuse.reference = uri_ref(rt, job["options"]["reference"]).fetch(rt)
        out = video_files.temp_path(".mp4")
        try:
            with INPUTS.get(job["identity"], job["input"], extension(job["input"]) or ".mp4",
                            rt.config.max_video_bytes, rt.config.storage_timeout_s) as local:  # kept until fused
                started = time.perf_counter()
                with about_clip(), _encoder_here(options.codec):
                    report = fuse_video(fuser, source, local, out, options, segment=seg, info=VideoInfo.from_dict(job["info"]))
                seconds = time.perf_counter() - started
            video_files.publish(part_uri, out, rt.config.storage_timeout_s)
        finally:
            video_files.remove(out)
    record = {"segment": index, "fusion_id": uuid.uuid4().hex, "frames": seg.frames, "seconds": round(seconds, 3),
              "report": _report(report), "revision": rt.config.revision, "written_at": time.time()}
    jobs.write(jobs.part_record_uri(job["id"], index), record)  # after the part: a record means a whole part
    return record


def _report(report: Any) -> dict[str, Any]:
    return report.as_dict()


# -- stitching -----------------------------------------------------------------------------------------
def finish(rt: Runtime, jobs: JobStore, job: dict) -> str:
    """Stitch when every part is there, exactly once: 'incomplete', 'stitched', 'done' (already) or
    'claimed' (another delivery holds the stitch claim; if it dies, its redelivery or a later one
    takes the expired claim over)."""
    job_id = job["id"]
    if len(jobs.part_indices(job_id)) < len(job["segments"]):
        return "incomplete"
    if jobs.read(jobs.done_uri(job_id)) is not None:
        return "done"
    with leases.held(jobs.stitch_uri(job_id), rt.config.lease_ttl_s, rt.config.storage_timeout_s, or_none=True) as owner:
        if owner is None:
            return "claimed"
        if jobs.read(jobs.done_uri(job_id)) is not None:  # finished while we looked
            return "done"
        _stitch_claimed(rt, jobs, job)
        return "stitched"


def _stitch_claimed(rt: Runtime, jobs: JobStore, job: dict) -> None:
    job_id, out_uri, timeout = job["id"], job["output"], rt.config.storage_timeout_s
    marker = storage.read_json(out_uri + MARKER_SUFFIX, timeout)
    stitched: dict[str, Any] = {}
    stitch_id = marker.get("stitch_id") if marker else None
    if not (marker and marker.get("job") == job_id and storage.exists(out_uri, timeout)):
        folder = Path(tempfile.mkdtemp(prefix="stitch-", dir=video_files.work_dir()))
        try:
            parts = []
            for seg in job["segments"]:
                path = folder / f"part-{seg['index']:04d}.mp4"
                video_files.fetch(jobs.part_uri(job_id, seg["index"]), path, rt.config.max_video_bytes, timeout)
                parts.append(path)
            audio = INPUTS.get(job["identity"], job["input"], extension(job["input"]) or ".mp4",
                               rt.config.max_video_bytes, timeout) if job.get("has_audio") else contextlib.nullcontext()
            out = folder / f"out{extension(out_uri) or '.mp4'}"
            with audio as audio_from:  # kept until stitched
                stitched = stitch(parts, out, audio_from=audio_from).as_dict()
            stitch_id = uuid.uuid4().hex  # one per stitch that ran: an audit shows how many there were
            video_files.publish(out_uri, out, timeout)
        finally:
            video_files.remove(folder)
        storage.write_atomic(out_uri + MARKER_SUFFIX, json.dumps({
            "input": job["identity"], "job": job_id, "stitch_id": stitch_id, "event_id": job.get("event_id", ""),
            "revision": rt.config.revision, "written_at": time.time()}).encode(), timeout)
    records = jobs.part_records(job_id)
    summary = {"job": job_id, "output": out_uri, "input": job["input"], "frames": sum(r["frames"] for r in records.values()),
               "segments": len(job["segments"]), "duration_s": job["duration_s"], "revision": rt.config.revision,
               "stitch_seconds": stitched.get("seconds"), "stitch_id": stitch_id}
    if rt.config.k_sink:  # before the done record: a crash in between emits again (at least once), never not at all
        emit(rt, {"type": FUSION_COMPLETED, "id": f"{job_id}-completed", "subject": out_uri}, summary)
    jobs.write(jobs.done_uri(job_id), {**summary, "finished_at": time.time()})
    log.info("video job %s done: %s", job_id, out_uri)


# -- failures ------------------------------------------------------------------------------------------
def dead_letter_reason(extensions: dict[str, Any]) -> tuple[int | None, str]:
    """Knative's dead-letter extensions: knativeerrorcode (the last HTTP status) and knativeerrordata
    (the last answer's body, base64 in Knative's dispatchers, at most 1024 bytes): the problem's
    `detail` when the body is one of our problem documents."""
    code = extensions.get("knativeerrorcode")
    try:
        status = int(code) if code is not None else None
    except (TypeError, ValueError):
        status = None
    raw = str(extensions.get("knativeerrordata") or "")
    text = raw
    with contextlib.suppress(binascii.Error, ValueError):
        text = base64.b64decode(raw, validate=True).decode("utf-8")
    try:
        body = json.loads(text)
        if isinstance(body, dict) and "detail" in body:
            text = str(body["detail"])
    except ValueError:
        pass
    return status, text[:1024] or "delivery failed"


def fail_segment(rt: Runtime, data: Any, status: int | None, reason: str) -> dict[str, Any]:
    """Mark the job failed at this segment (the first failure recorded wins); nothing when the segment
    or the job got done after all (a late dead letter)."""
    jobs = store(rt)
    job, index = _segment_args(jobs, data)
    base = {"job": job["id"], "segment": index}
    if jobs.read(jobs.done_uri(job["id"])) is not None or jobs.read(jobs.part_record_uri(job["id"], index)) is not None:
        return {**base, "status": "ignored", "reason": "the segment was done after all"}
    jobs.create_once(jobs.failed_uri(job["id"]), {"segment": index, "status": status, "reason": reason,
                                                  "failed_at": time.time()})
    log.warning("video job %s failed at segment %d: %s", job["id"], index, reason)
    return {**base, "status": "failed-recorded"}
