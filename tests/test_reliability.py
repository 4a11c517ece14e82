"""Reduced forms of bench/load.py and bench/replay.py, run in CI (the full runs' figures are in the README)."""

from __future__ import annotations

import pytest

from .conftest import shared_file


@pytest.fixture(autouse=True)
def _needs_shared():
    shared_file("models", "scrfd_2.5g_bnkps.onnx")


def test_load_every_request_is_answered():
    from bench.load import run

    summary = run(seconds=3, max_requests=400, quiet=True)
    for level in ("2x", "5x"):
        row = summary[level]
        assert row["sent"] > 0 and row["answered"] == row["sent"], row
        assert row["other"] == 0, row["statuses"]  # no hang, reset, 500 or 429/503 without Retry-After
        assert row["429"] > 0, "the load was meant to exceed MAX_INFLIGHT"
        assert row["200"] > 0


def test_replay_with_kills_loses_and_duplicates_nothing():
    from bench.replay import run

    result = run(events=10, duplicates=2, seconds=90, kill_every=(1.0, 2.5), seed=3, quiet=True)
    assert result["acknowledged"] == result["events"], result
    assert (result["lost"], result["duplicated"], result["partial"]) == (0, 0, 0), result
    assert result["kills_worker"] + result["kills_server"] > 0, result
