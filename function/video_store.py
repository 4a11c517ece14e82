"""Video jobs in the object store: where each document lives, and the job's status read from them.

All state of a fan-out lives in the store, never in a process, so any pod can take any delivery:

    <VIDEO_JOBS_URI><id>.json             the job document, written once when the job is planned
    <VIDEO_JOBS_URI><id>/part-0003.mp4    a fused segment (no audio), published atomically
    <VIDEO_JOBS_URI><id>/part-0003.json   its record (frames, seconds, faces): the segment is done
    <VIDEO_JOBS_URI><id>/stitch           claimed (a lease, leases.py) by the one delivery that stitches
    <VIDEO_JOBS_URI><id>/done.json        the job is done: output URI, frames, seconds
    <VIDEO_JOBS_URI><id>/failed.json      a segment failed for good (dead-lettered): which and why

Only the job document is written before the job starts; every later fact is its own object, created
by the one delivery that knows it, so concurrent deliveries never overwrite each other's progress.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from . import leases, storage
from .problems import Problem

JOB_ID = re.compile(r"^[0-9a-f]{24}$")
PART_RECORD = re.compile(r"part-(\d{4,})\.json$")


@dataclass(frozen=True)
class JobStore:
    root: str  # VIDEO_JOBS_URI, ending in '/'
    timeout: float

    def doc_uri(self, job_id: str) -> str:
        return f"{self.root}{job_id}.json"

    def folder(self, job_id: str) -> str:
        return f"{self.root}{job_id}/"

    def part_uri(self, job_id: str, index: int, ext: str = ".mp4") -> str:
        return f"{self.folder(job_id)}part-{index:04d}{ext}"

    def part_record_uri(self, job_id: str, index: int) -> str:
        return f"{self.folder(job_id)}part-{index:04d}.json"

    def stitch_uri(self, job_id: str) -> str:
        return f"{self.folder(job_id)}stitch"

    def runner_uri(self, job_id: str) -> str:
        return f"{self.folder(job_id)}runner"

    def done_uri(self, job_id: str) -> str:
        return f"{self.folder(job_id)}done.json"

    def failed_uri(self, job_id: str) -> str:
        return f"{self.folder(job_id)}failed.json"

    # -- reading ---------------------------------------------------------------------------------------
    def read(self, uri: str) -> dict | None:
        return storage.read_json(uri, self.timeout)

    def job(self, job_id: str) -> dict | None:
        return self.read(self.doc_uri(job_id)) if JOB_ID.match(job_id) else None

    def part_indices(self, job_id: str) -> set[int]:
        """The segments done so far, from one listing: a record is written atomically after its part,
        so a listed record means a whole part (every delivery asks this; reading every record each time
        would cost O(segments^2) reads per job)."""
        folder = self.folder(job_id)

        def _list() -> list[str]:
            fs, path = storage.url_to_fs(folder)
            try:
                return [str(p) for p in fs.ls(path, detail=False)]
            except FileNotFoundError:
                return []

        names = storage.run_io(_list, self.timeout, "listing the job's parts")
        return {int(match[1]) for match in map(PART_RECORD.search, names) if match}

    def part_records(self, job_id: str) -> dict[int, dict]:
        """The records of the segments done so far, by segment index (for the stitch and the status)."""
        records = {}
        for index in sorted(self.part_indices(job_id)):
            record = self.read(self.part_record_uri(job_id, index))
            if record is not None:
                records[index] = record
        return records

    def job_ids(self) -> list[str]:
        """Every job document's id (the local runner's resume scan)."""
        def _list() -> list[str]:
            fs, path = storage.url_to_fs(self.root)
            try:
                names = fs.ls(path, detail=False)
            except FileNotFoundError:
                return []
            return [str(n).rsplit("/", 1)[-1].removesuffix(".json") for n in names if str(n).endswith(".json")]
        return [i for i in storage.run_io(_list, self.timeout, "listing the jobs") if JOB_ID.match(i)]

    # -- writing ---------------------------------------------------------------------------------------
    def create(self, job_id: str, doc: dict) -> bool:
        """Write the job document unless one is there; True if this call created it."""
        return storage.run_io(lambda: storage.write_exclusive(self.doc_uri(job_id), json.dumps(doc).encode()),
                              self.timeout, "writing the job document", write=True)

    def write(self, uri: str, doc: dict) -> None:
        storage.write_atomic(uri, json.dumps(doc).encode(), self.timeout)

    def create_once(self, uri: str, doc: dict) -> bool:
        return storage.run_io(lambda: storage.write_exclusive(uri, json.dumps(doc).encode()), self.timeout,
                              "writing the job's state", write=True)

    # -- status ----------------------------------------------------------------------------------------
    def status(self, job_id: str) -> dict[str, Any]:
        """What GET /jobs/<id> answers: state, segments and frames done of all, frames/s, output, error."""
        job = self.job(job_id)
        if job is None:
            raise Problem(404, "job-not-found", "no video job with this id")
        done = self.read(self.done_uri(job_id))
        failed = self.read(self.failed_uri(job_id))
        records = self.part_records(job_id)
        frames_done = sum(int(r.get("frames", 0)) for r in records.values())
        fused_s = sum(float(r.get("seconds", 0.0)) for r in records.values())
        if done is not None:
            state = "done"
        elif failed is not None:
            state = "failed"
        elif len(records) == len(job["segments"]) and self._stitch_held(job_id):
            state = "stitching"
        elif records:
            state = "running"
        else:
            state = "planned"
        end = done["finished_at"] if done else time.time()
        elapsed = max(end - job["created_at"], 1e-6)
        body: dict[str, Any] = {
            "id": job_id, "state": state, "input": job["input"], "output": job["output"],
            "segments": {"done": len(records), "total": len(job["segments"])},
            "frames": {"done": frames_done, "total": job["frames"]},
            "frames_per_second": round(frames_done / elapsed, 2),
            "fusion_frames_per_second": round(frames_done / fused_s, 2) if fused_s else 0.0,
            "created_at": job["created_at"], "duration_s": job["duration_s"],
        }
        if done is not None:
            body["finished_at"] = done["finished_at"]
        if failed is not None:
            body["error"] = failed
        return body

    def _stitch_held(self, job_id: str) -> bool:
        lease = self.read(self.stitch_uri(job_id) + leases.LEASE_SUFFIX)
        return bool(lease) and float(lease.get("expires_at", 0)) > time.time()
