"""bench/gil.py: py-spy's raw GIL samples turned into milliseconds per request."""

from __future__ import annotations

import pytest

from bench.gil import summarise

# py-spy --format raw: one line per distinct stack, frames outermost first, then the sample count
SAMPLES = """\
run (threading.py:10);fuse (function/main.py:5);paste_back (pipeline/paste.py:101) 30
run (threading.py:10);fuse (function/main.py:5);paste_back (pipeline/paste.py:90) 10
run (threading.py:10);fuse (function/main.py:5);decode_image (pipeline/images.py:147) 30
run (threading.py:10);parse (werkzeug/multipart.py:256) 30
"""


def test_samples_become_ms_per_request_by_line_and_by_function():
    summary = summarise(SAMPLES, requests=10, rate=200)  # 100 samples at 200/s = 0.5 s over 10 requests
    assert summary["ms_per_request"] == pytest.approx(50.0)
    assert summary["self"][0] == ["paste_back (pipeline/paste.py:101)", pytest.approx(15.0)]
    inclusive = dict(summary["inclusive"])
    assert inclusive["paste_back (pipeline/paste.py)"] == pytest.approx(20.0)  # both of its lines
    # on 70% and 100% of the samples: the request's wrappers, not listed
    assert "run (threading.py)" not in inclusive and "fuse (function/main.py)" not in inclusive
    assert summarise("", requests=10)["ms_per_request"] == 0.0
