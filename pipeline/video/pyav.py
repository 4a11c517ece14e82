"""PyAV, imported on first use.

Importing `av` loads FFmpeg's libraries (about 70 ms). Every pod imports the video modules, since the
routes are the same, but most requests are images: deferring the import keeps that time out of each
cold start and puts it on the first clip instead. `av` here is a stand-in for the module; any attribute
imports PyAV (Python's import lock makes concurrent first uses safe) and hands back the real one. Where
PyAV is missing, a clip fails with an ImportError naming it, while images are still served.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


class _PyAV:
    """`av`, imported when first used."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_module(), name)


def _module() -> ModuleType:
    import av as module

    return module


av: Any = _PyAV()
