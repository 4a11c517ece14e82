"""Without K_SINK, this process fuses its video jobs itself, one segment after another, after the 202.

The runner is one background thread with a queue of job ids. It holds a lease on each job while it
works on it (`<job>/runner`, leases.py, renewed while held however long the job takes), so two
processes sharing a store never run one job twice at once, and it runs each segment exactly as a
segment event would (fanout.run_segment: the same parts, records and stitch claim), so the job
document and GET /jobs/<id> look the same either way.

A process that stops mid-way loses nothing that was done: parts are published as they finish. On
SIGTERM the runner starts no new segment (the drain waits for the one in its fusion slot); killed,
it leaves its part lease and job lease behind. Any process without K_SINK looks for unfinished jobs in
VIDEO_JOBS_URI when it turns ready and every RESCAN_S after that, and takes over a job whose lease has
expired or whose holder on this host is gone: the restarted pod resumes at the first missing part.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

from . import fanout, leases, shutdown
from .problems import as_problem

log = logging.getLogger("facefusion.video_runner")
RESCAN_S = 30.0
TRANSIENT_TRIES = 5  # a segment failing with 429/5xx this many times in a row fails the job (Eventing: retry)


class LocalRunner:
    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Any, str]] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._scanners: dict[tuple[int, int], threading.Thread] = {}  # per process and Runtime (tests load it twice)

    def submit(self, rt: Any, job_id: str) -> None:
        with self._lock:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
            self._queue.put((rt, job_id))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="video-runner", daemon=True)
                self._thread.start()

    def start_scanning(self, rt: Any) -> None:
        """Resume unfinished jobs of the store now and every RESCAN_S (only without K_SINK)."""
        if rt.config.k_sink or not rt.config.video_jobs_uri:
            return
        key = (os.getpid(), id(rt))  # a forked worker inherits the parent's entry but not its thread
        with self._lock:
            if key in self._scanners:
                return
            scanner = self._scanners[key] = threading.Thread(target=self._scan_loop, args=(rt,), name="video-rescan",
                                                             daemon=True)
            scanner.start()

    def _scan_loop(self, rt: Any) -> None:
        while not shutdown.DRAINING.is_set():
            if rt.warmup.readiness.ready:
                try:
                    self.scan(rt)
                except Exception:  # a store hiccup: next time
                    log.warning("scanning for unfinished video jobs failed", exc_info=True)
                wait = RESCAN_S
            else:
                wait = 0.5
            if shutdown.DRAINING.wait(wait):
                return

    def scan(self, rt: Any) -> int:
        jobs = fanout.store(rt)
        found = 0
        for job_id in jobs.job_ids():
            if jobs.read(jobs.done_uri(job_id)) is None and jobs.read(jobs.failed_uri(job_id)) is None:
                self.submit(rt, job_id)
                found += 1
        return found

    def _loop(self) -> None:
        while True:
            rt, job_id = self._queue.get()
            try:
                self.run(rt, job_id)
            except Exception:
                log.exception("video job %s: the local runner failed; it is tried again on the next scan", job_id)
            finally:
                with self._lock:
                    self._queued.discard(job_id)

    def run(self, rt: Any, job_id: str) -> str:
        """Fuse every missing segment of a job, then stitch; 'busy' when another process holds it."""
        jobs = fanout.store(rt)
        job = jobs.job(job_id)
        if job is None:
            return "missing"
        # held (renewed) for the whole job, which may well outlast LEASE_TTL_S: no rescan takes it over meanwhile
        with leases.held(jobs.runner_uri(job_id), rt.config.lease_ttl_s, rt.config.storage_timeout_s,
                         or_none=True) as owner:
            if owner is None:
                return "busy"
            for seg in job["segments"]:
                if shutdown.DRAINING.is_set():
                    return "stopped"
                result = self._segment(rt, job_id, seg["index"])
                if result != "ok":
                    return result
            return fanout.finish(rt, jobs, job)

    def _segment(self, rt: Any, job_id: str, index: int) -> str:
        """'ok', 'failed' (recorded in the job), 'busy' (another delivery holds the part: the next scan
        looks again) or 'stopped' (draining)."""
        data = {"job": job_id, "segment": index}
        attempt = 0
        while attempt < TRANSIENT_TRIES:
            try:
                outcome = fanout.run_segment(rt, data)
                return "failed" if outcome["status"] == "ignored" else "ok"
            except Exception as exc:
                problem = as_problem(exc)
                if problem is not None and problem.code == "in-progress":
                    return "busy"
                if problem is not None and problem.code in ("too-many-inflight", "not-ready"):
                    # direct requests hold every fusion slot, or the models are reloading: wait, never fail
                    if shutdown.DRAINING.wait(problem.retry_after or 1):
                        return "stopped"
                    continue
                attempt += 1
                status = problem.status if problem else 503
                reason = problem.detail if problem else f"unexpected {type(exc).__name__}"
                if problem is None:
                    log.exception("video job %s segment %d", job_id, index)
                if not (status >= 500 or status in (408, 429)) or attempt == TRANSIENT_TRIES:
                    fanout.fail_segment(rt, data, status, reason)  # what a dead letter would record
                    return "failed"
                retry = problem.retry_after if problem and problem.retry_after else 1
                if shutdown.DRAINING.wait(min(retry, 2 ** (attempt - 1))):
                    return "stopped"
        return "failed"


RUNNER = LocalRunner()
