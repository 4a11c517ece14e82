"""Reduced forms of bench/video_fanout.py and bench/video_replay.py, run in CI (the full runs' figures
are in the README): a clip of a few seconds, one and two worker processes, kills during the replay."""

from __future__ import annotations

import pytest

from .conftest import shared_file


@pytest.fixture(autouse=True)
def _needs_shared():
    shared_file("models", "scrfd_2.5g_bnkps.onnx")


def test_fanout_output_equals_the_single_process_output():
    from bench.video_fanout import fanout_table, run

    result = run(seconds=2.0, fps=10, width=160, height=120, workers=(1, 2), segment_seconds=1.0, quiet=True)
    rows = result["rows"]
    assert [r["workers"] for r in rows] == [1, 2] and all(r["segments"] >= 2 for r in rows)
    assert all(r["equal_frames"] and r["frames"] == result["clip"]["frames"] for r in rows), rows
    assert "fan-out, N = 2" in fanout_table(result)


def test_replay_with_kills_loses_duplicates_and_tears_nothing():
    from bench.video_replay import run

    result = run(jobs=2, seconds=2.0, workers=2, duration=120, kill_every=(0.5, 1.5), duplicate=0.5, seed=5,
                 quiet=True, min_kills=1)
    assert result["kills"] >= 1 and result["completed_events"] >= result["jobs"], result
    assert (result["lost"], result["duplicated"], result["partial"]) == (0, 0, 0), result
