"""Leases: one delivery at a time fuses an output.

Delivery is at least once, and two deliveries of one storage event can arrive at the same moment on
different pods. A lease `<output>.facefusion.lease`, created only if none is there, lets the first fuse
and answers the others 429 (retried; the redelivery then finds the done marker). Which store gives
which guarantee is in the README.

Work that can outlast LEASE_TTL_S (a video segment, a stitch, a local runner's whole job) holds its
lease with `held`, which renews it every third of the TTL while the work runs: the lease then expires
only when its holder is gone (killed or hung), never because its work is slow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator

from .problems import Problem
from .storage import HOST, load_json, pid_alive, replace, run_io, url_to_fs, write_exclusive

log = logging.getLogger("facefusion.leases")

LEASE_SUFFIX = ".facefusion.lease"
_claim_locks = [threading.Lock() for _ in range(64)]  # in-process exclusion (memory://, check-then-write stores)
_held: set[str] = set()  # owner tokens of the leases this process holds now


def _lock_for(lease_uri: str) -> threading.Lock:
    return _claim_locks[hash(lease_uri) % len(_claim_locks)]


def _lease_expiry(fs, path: str, held: dict | None, ttl: float) -> float:
    """When a lease found in place expires: as it says, or (unreadable) its age plus the TTL."""
    if held is not None and isinstance(held.get("expires_at"), (int, float)):
        return float(held["expires_at"])
    try:
        return fs.modified(path).timestamp() + ttl
    except Exception:  # no modification time: an unreadable lease is taken over
        return 0.0


def _holder_gone(held: dict | None) -> bool:
    """A lease taken on this host by a process that is gone (a killed worker, a restarted container:
    our pid, but not one of our leases) is not waited out."""
    if not held or held.get("host") != HOST or not isinstance(held.get("pid"), int):
        return False
    if held["pid"] == os.getpid():
        return held.get("owner") not in _held
    return not pid_alive(held["pid"])


def claim(uri: str, ttl: float, timeout: float) -> str:
    """Take the lease on output `uri` (`<output>.facefusion.lease`) and return its owner token; raise a
    429 problem (retryable, with Retry-After) while another delivery holds a live lease. An expired
    lease (its holder was killed or hung), or one whose holder on this host is gone, is taken over."""
    owner = f"{HOST}.{os.getpid()}.{uuid.uuid4().hex}"
    lease_uri = uri + LEASE_SUFFIX

    def _claim() -> float | None:
        now = time.time()
        body = json.dumps({"owner": owner, "host": HOST, "pid": os.getpid(), "claimed_at": now,
                           "expires_at": now + ttl}).encode()
        with _lock_for(lease_uri):
            if write_exclusive(lease_uri, body):
                return None
            fs, path = url_to_fs(lease_uri)
            held = load_json(fs, path)
            expiry = _lease_expiry(fs, path, held, ttl)
            if expiry > time.time() and not _holder_gone(held):
                return expiry - time.time()
            with contextlib.suppress(FileNotFoundError):  # expired: take it over
                fs.rm_file(path)
            return None if write_exclusive(lease_uri, body) else ttl

    _held.add(owner)
    try:
        remaining = run_io(_claim, timeout, "claiming the output", write=True)
    except BaseException:
        _held.discard(owner)
        raise
    if remaining is not None:
        _held.discard(owner)
        raise Problem(429, "in-progress", "another delivery of this event is being fused right now; retry shortly",
                      retry_after=max(1, min(int(remaining) + 1, 10)))
    return owner


def release(uri: str, owner: str, timeout: float) -> None:
    """Drop our lease on output `uri`; best effort (an unreleased lease expires on its own)."""
    def _release() -> None:
        fs, path = url_to_fs(uri + LEASE_SUFFIX)
        with _lock_for(uri + LEASE_SUFFIX):  # never between a renewal's look and its write
            held = load_json(fs, path)
            if held is not None and held.get("owner") == owner:
                fs.rm_file(path)
    try:
        with contextlib.suppress(Problem):
            run_io(_release, timeout, "releasing the output", write=True)
    finally:
        _held.discard(owner)


def renew(uri: str, owner: str, ttl: float, timeout: float) -> bool:
    """Push our lease's expiry to now + `ttl`; False when the lease is no longer ours (released, or
    taken over after it expired), and then nothing is written."""
    lease_uri = uri + LEASE_SUFFIX

    def _renew() -> bool:
        fs, path = url_to_fs(lease_uri)
        with _lock_for(lease_uri):
            found = load_json(fs, path)
            if owner not in _held or found is None or found.get("owner") != owner:
                return False
            replace(lease_uri, json.dumps({**found, "expires_at": time.time() + ttl}).encode())
            return True

    return run_io(_renew, timeout, "renewing the lease", write=True)


def _keep_renewed(uri: str, owner: str, ttl: float, timeout: float, stop: threading.Event) -> None:
    while not stop.wait(ttl / 3):
        try:
            if not renew(uri, owner, ttl, timeout):
                log.warning("the lease on %s is no longer ours; renewing stopped", uri)
                return
        except Problem as problem:  # a store hiccup: the next renewal comes well before the expiry
            log.warning("renewing the lease on %s failed: %s", uri, problem.detail)


@contextlib.contextmanager
def held(uri: str, ttl: float, timeout: float, *, or_none: bool = False) -> Iterator[str | None]:
    """Hold the lease on `uri` for the body, however long it runs: claimed on entry (the 429 of `claim`
    while another holds it; with `or_none`, None is yielded instead and the body runs without the
    lease), renewed every ttl/3 by a timer thread, released on exit."""
    try:
        owner = claim(uri, ttl, timeout)
    except Problem as problem:
        if or_none and problem.code == "in-progress":
            yield None
            return
        raise
    stop = threading.Event()
    renewer = threading.Thread(target=_keep_renewed, args=(uri, owner, ttl, timeout, stop), daemon=True,
                               name="lease-renewal")
    renewer.start()
    try:
        yield owner
    finally:
        stop.set()
        renewer.join(timeout)  # a renewal in flight finishes (or gives up) before the release
        release(uri, owner, timeout)
