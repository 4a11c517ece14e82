"""`python -m bench.startup_ab` in reduced form: the bench that compares process start to ready of two
sides (another checkout, or this one under other settings) keeps working."""

from __future__ import annotations

import re
import sys

import pytest


def test_startup_ab_compares_this_checkout_with_itself_under_other_settings(capsys, monkeypatch, scrfd_path):
    from bench.startup_ab import main

    monkeypatch.setattr(sys, "argv", ["startup_ab", "--against", "CUDA_EARLY_CONTEXT=off", "--runs", "1"])
    main()
    out = capsys.readouterr().out
    rows = {line.split("|")[0].strip(): line for line in out.splitlines() if "|" in line}
    assert {"this checkout", "CUDA_EARLY_CONTEXT=off"} <= set(rows)
    for name in ("this checkout", "CUDA_EARLY_CONTEXT=off"):
        ready = float(rows[name].split("|")[1])
        assert 0 < ready < 120
    assert re.search(r"ratio this/other: \d+\.\d\d", out)


def test_startup_ab_wants_one_side_and_well_formed_settings(monkeypatch):
    from bench.startup_ab import main

    for argv in (["startup_ab"], ["startup_ab", "--against", "nonsense"]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 2  # argparse's usage error, before anything starts
