"""Where the parts of a multipart upload are held while Flask parses the form.

Werkzeug writes every file part of a body over 500 KB to a temporary file on disk, which the function
then reads back whole into memory (images are decoded from bytes). For a 3.4 MB upload (the Solvay
photograph) that made the form's parsing take 2.9-3.6 ms against 1.5-1.7 ms with the parts in memory
(dev machine, `python -m bench.gpu --cpu --images solvay`'s `handler` shows it in place). Bodies up to
MEMORY_BODY_BYTES now keep their parts in memory: no more than the function already holds once it has
read the images, and at most that much per request thread. Larger bodies (a video clip) keep
Werkzeug's temporary files, so a long upload never sits in memory.
"""

from __future__ import annotations

import io
from typing import IO

import flask

MEMORY_BODY_BYTES = 32 << 20  # above MAX_IMAGE_BYTES' default (20 MiB) with room for a source beside it


class FormRequest(flask.Request):
    """Flask's request, with the file parts of bodies up to MEMORY_BODY_BYTES kept in memory."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        if total_content_length is not None and total_content_length <= MEMORY_BODY_BYTES:
            return io.BytesIO()
        return super()._get_file_stream(total_content_length, content_type, filename, content_length)
