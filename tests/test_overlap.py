"""A source the process has not seen is made beside the target's decode and detection on a GPU
(pipeline/overlap.py): the answer, the report and which error wins must be those of making it in turn."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from pipeline import Fuser, NoSourceFace, NoTargetFace, overlap
from pipeline.errors import ImageError

from .conftest import REPO, helper_slots, shared_file


def blank_jpeg(value: int = 200) -> bytes:
    return cv2.imencode(".jpg", np.full((300, 400, 3), value, np.uint8))[1].tobytes()


class SourceThreads:
    """Records the thread every `source_face` call of a fuser runs on."""

    def __init__(self, fuser: Fuser, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        original = fuser.source_face

        def recorded(*args, **kwargs):
            self.names.append(threading.current_thread().name)
            return original(*args, **kwargs)
        monkeypatch.setattr(fuser, "source_face", recorded)


@pytest.fixture()
def beside(fuser: Fuser, monkeypatch: pytest.MonkeyPatch) -> Fuser:
    """The session fuser as on a GPU (its CPU detector would make sources in turn), with an empty cache."""
    monkeypatch.setattr(fuser, "sources_beside", True)
    fuser._sources.clear()
    yield fuser
    fuser._sources.clear()


def test_on_the_cpu_sources_are_made_in_turn(fuser: Fuser, monkeypatch):
    assert fuser.models.active["detector"][0] == "CPUExecutionProvider" and fuser.sources_beside is False
    threads = SourceThreads(fuser, monkeypatch)
    fuser._sources.clear()
    fuser.fuse_bytes(shared_file("images", "obama.jpg").read_bytes(), shared_file("images", "biden.jpg").read_bytes())
    assert threads.names == [threading.current_thread().name]


def test_a_new_source_beside_the_target_gives_the_same_answer_and_report(beside: Fuser, monkeypatch):
    source, target = shared_file("images", "obama.jpg").read_bytes(), shared_file("images", "biden.jpg").read_bytes()
    threads = SourceThreads(beside, monkeypatch)
    made_beside = beside.fuse_bytes(source, target)
    assert threads.names[0].startswith("overlap")  # made on a helper thread
    assert made_beside.report.timings_ms["decode"] > 0 and made_beside.report.timings_ms["embed"] > 0

    beside._sources.clear()
    monkeypatch.setattr(beside, "sources_beside", False)
    in_turn = beside.fuse_bytes(source, target)
    assert threads.names[1] == threading.current_thread().name
    assert made_beside.data == in_turn.data
    assert made_beside.report.source_face == in_turn.report.source_face
    assert made_beside.report.faces == in_turn.report.faces

    monkeypatch.setattr(beside, "sources_beside", True)  # a cached source: nothing is started
    beside.fuse_bytes(source, target)
    assert len(threads.names) == 2


def test_with_every_helper_busy_the_source_is_made_in_the_requests_thread(beside: Fuser, monkeypatch):
    helper_slots(monkeypatch, 1, busy=1)  # the one helper is taken
    threads = SourceThreads(beside, monkeypatch)
    result = beside.fuse_bytes(shared_file("images", "obama.jpg").read_bytes(),
                               shared_file("images", "biden.jpg").read_bytes())
    assert threads.names == [threading.current_thread().name] and result.report.faces_swapped == 1


def helpers_idle() -> bool:
    """Every helper slot free: no source work is left running."""
    taken = [overlap._slots.acquire(blocking=False) for _ in range(overlap.HELPER_THREADS)]
    for ok in taken:
        if ok:
            overlap._slots.release()
    return all(taken)


def test_the_source_error_wins_over_the_targets_as_before(beside: Fuser, monkeypatch):
    obama, faceless = shared_file("images", "obama.jpg").read_bytes(), blank_jpeg()
    threads = SourceThreads(beside, monkeypatch)
    with pytest.raises(NoSourceFace):  # neither has a face: the source is named, as when made first
        beside.fuse_bytes(faceless, blank_jpeg(90))
    with pytest.raises(NoTargetFace):
        beside.fuse_bytes(obama, faceless)
    assert len(threads.names) == 2 and all(name.startswith("overlap") for name in threads.names)

    def detection_fails(*args, **kwargs):
        raise RuntimeError("the target's detection failed")
    monkeypatch.setattr(beside, "detect", detection_fails)
    with pytest.raises(ImageError) as caught:  # an undecodable source is still named before that
        beside.fuse_bytes(b"\xff\xd8\xff\xe0 not a source" + bytes(64), obama)
    assert caught.value.image == "source"
    with pytest.raises(RuntimeError, match="target's detection"):
        beside.fuse_bytes(obama + b"\x00", obama)  # a new source with a face: the detection's own error
    assert helpers_idle()


def test_a_request_that_fails_meanwhile_ends_with_its_source_work(beside: Fuser, monkeypatch):
    threads = SourceThreads(beside, monkeypatch)
    with pytest.raises(ImageError) as caught:  # a target that cannot be decoded is named at once
        beside.fuse_bytes(shared_file("images", "obama.jpg").read_bytes(), b"\xff\xd8\xff\xe0 not a jpeg" + bytes(64))
    assert caught.value.image == "target" and threads.names[0].startswith("overlap")
    # the source work did not outlive the request: finished (and cached) before the error was raised
    assert helpers_idle() and len(beside._sources) == 1


def test_in_turn_a_faceless_source_fails_before_the_target_is_searched(fuser: Fuser, monkeypatch):
    searched = []
    monkeypatch.setattr(fuser, "detect", lambda *args, **kwargs: searched.append(1) or [])
    with pytest.raises(NoSourceFace):
        fuser.fuse_bytes(blank_jpeg(33), shared_file("images", "obama.jpg").read_bytes())
    assert fuser.sources_beside is False and searched == []


def test_pending_work_raises_in_the_caller_and_frees_its_helper(monkeypatch):
    helper_slots(monkeypatch, overlap.HELPER_THREADS)

    def fails() -> int:
        raise ValueError("made on a helper")

    pending = overlap.start(fails)
    assert pending.on_helper
    for _ in range(2):  # as often as it is asked
        with pytest.raises(ValueError, match="made on a helper"):
            pending.result()
    names = [overlap.start(threading.current_thread).result().name for _ in range(overlap.HELPER_THREADS * 3)]
    assert all(name.startswith("overlap") for name in names)  # every slot came back
    made = overlap.inline(fails)
    for _ in range(2):
        with pytest.raises(ValueError):
            made.result()
    assert overlap.inline(lambda: 7).result() == 7 and overlap.ready(8).result() == 8


def test_each_shares_its_items_between_the_caller_and_the_free_helpers(monkeypatch):
    """A helper that ends its item takes the next: with one slow item and a helper free, the helper does
    the quick ones rather than the caller after the slow one (the caller took them all before)."""
    helper_slots(monkeypatch, 2)
    caller = threading.current_thread().name
    caller_took, others_done = threading.Event(), threading.Event()
    ran: dict[int, str] = {}
    lock = threading.Lock()

    def work(item: int) -> int:
        # whichever item the caller takes is the slow one (which thread takes item 0 is the scheduler's
        # choice); helpers wait until it has, so the caller surely gets one, then do the rest meanwhile
        name = threading.current_thread().name
        with lock:
            ran[item] = name
        if name == caller:
            caller_took.set()
            assert others_done.wait(10)
        else:
            caller_took.wait(10)
            with lock:
                if sum(n != caller for n in ran.values()) == 7:
                    others_done.set()
        return item * 10

    assert overlap.each(work, range(8)) == [i * 10 for i in range(8)]
    assert sorted(ran) == list(range(8)) and list(ran.values()).count(caller) == 1, ran
    assert overlap.free_helpers() == 2

    helper_slots(monkeypatch, 2, busy=2)  # none free: the caller does them all, in order
    done: list[int] = []
    assert overlap.each(lambda i: done.append(i) or threading.current_thread().name, range(4)) == [caller] * 4
    assert done == [0, 1, 2, 3]


def test_each_raises_the_first_failure_in_order_once_every_item_has_ended(monkeypatch):
    helper_slots(monkeypatch, 3)
    ended: list[int] = []

    def work(item: int) -> None:
        time.sleep(0.05 * (3 - item))  # item 2 fails first, item 1 after it
        ended.append(item)
        if item in (1, 2):
            raise ValueError(f"item {item}")

    with pytest.raises(ValueError, match="item 1"):
        overlap.each(work, range(3))
    assert sorted(ended) == [0, 1, 2]  # nothing still running when it raised

    helper_slots(monkeypatch, 1, busy=1)  # no helper: after a failure no further item is begun
    begun: list[int] = []

    def fails(item: int) -> None:
        begun.append(item)
        raise RuntimeError(item)

    with pytest.raises(RuntimeError):
        overlap.each(fails, range(5))
    assert begun == [0]


def test_the_bench_compares_beside_with_in_turn_on_the_cpu(capsys):
    shared_file("models", "scrfd_2.5g_bnkps.onnx")
    from bench.source_overlap import main

    main(["--requests", "2"])
    out = capsys.readouterr().out
    assert "would make a new source in turn" in out  # the CPU's choice, said in the header
    rows = [line for line in out.splitlines() if line.startswith(("in turn", "beside"))]
    assert len(rows) == 4 and all(float(line.split("|")[2]) > 0 for line in rows)


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("share", None), ("", None)])
def test_cpu_threads_bounds_the_helper_threads(value, expected):
    """A worker's helper threads stay within its CPU_THREADS (what WORKERS processes share); `share` in a
    process alone, or no value, leaves them at min(8, the usable CPUs)."""
    import os
    import subprocess
    import sys

    from pipeline.config import usable_cpus

    env = {**os.environ, "CPU_THREADS": value}
    out = subprocess.run([sys.executable, "-c", "from pipeline import overlap; print(overlap.HELPER_THREADS)"],
                         env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert int(out.stdout) == (expected or min(8, usable_cpus()))
