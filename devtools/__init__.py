"""Development tools: stand-in models and a one-command local server.

Not a shipped package: it is not in pyproject's packages and the container image does not copy it.
Run it from a checkout with the project's interpreter, e.g. `.venv/bin/python -m devtools serve`.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DETECTOR = REPO.parent / "shared" / "models" / "scrfd_2.5g_bnkps.onnx"
