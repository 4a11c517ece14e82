"""Where a multipart upload's parts are held while the form is parsed (function/uploads.py): in memory
for bodies up to MEMORY_BODY_BYTES, in a temporary file beyond, as Werkzeug does."""

from __future__ import annotations

import io

import pytest
from werkzeug.test import EnvironBuilder

from bench.form_client import multipart_form
from function import uploads


def parsed(body: bytes, content_type: str) -> uploads.FormRequest:
    return uploads.FormRequest(EnvironBuilder(method="POST", data=body, content_type=content_type).get_environ())


@pytest.mark.parametrize("size", [600 << 10, 3 << 20])  # Werkzeug put parts of bodies over 500 KB on disk
def test_parts_of_an_image_sized_body_are_read_from_memory(size):
    image = bytes(range(256)) * (size // 256)
    request = parsed(*multipart_form({"source": b"\xff\xd8small", "target": image}, {"faces": "all"}))
    assert isinstance(request.files["target"].stream, io.BytesIO)
    assert request.files["target"].read() == image and request.files["source"].read() == b"\xff\xd8small"
    assert request.form["faces"] == "all"


def test_parts_of_a_larger_body_go_to_a_temporary_file(monkeypatch):
    monkeypatch.setattr(uploads, "MEMORY_BODY_BYTES", 1 << 20)  # a clip's size, scaled down
    clip = b"\x00\x00\x00\x18ftypmp42" + bytes(2 << 20)
    request = parsed(*multipart_form({"source": b"\xff\xd8small", "target": clip}))
    assert not isinstance(request.files["target"].stream, io.BytesIO)
    assert request.files["target"].stream.fileno() >= 0  # a real file
    assert request.files["target"].read() == clip
