"""The default model set: insightface's buffalo_l detector and recognizer with inswapper_128.

The SHA-256 values are pinned; a download is accepted only when it matches. They agree across several
independent public projects that pin the same files (model catalogues of face-swap tools). This
environment has no internet, so the download itself is exercised only up to its fast failure.
Mirrors are tried in order; the hash, not the host, is what we trust.
"""

from __future__ import annotations

BUFFALO_L_ZIP = {
    "urls": ["https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"],
    "sha256": "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
    "size": 288621354,
}

DEFAULT_SET = {
    "name": "buffalo_l + inswapper_128",
    "version": "buffalo_l-inswapper_128",
    "models": {
        "detector": {
            "file": "det_10g.onnx",
            "sha256": "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
            "kind": "scrfd",
            "input_size": [640, 640],
            "archive": {**BUFFALO_L_ZIP, "member": "det_10g.onnx"},
        },
        "recognizer": {
            "file": "w600k_r50.onnx",
            "sha256": "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
            "size": 174383860,
            "kind": "arcface",
            "input_size": [112, 112],
            "archive": {**BUFFALO_L_ZIP, "member": "w600k_r50.onnx"},
        },
        "swapper": {
            "file": "inswapper_128.onnx",
            "sha256": "e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af",
            "size": 554253681,
            "kind": "inswapper",
            "input_size": [128, 128],
            "urls": [
                "https://github.com/facefusion/facefusion-assets/releases/download/models/inswapper_128.onnx",
                "https://huggingface.co/ezioruan/inswapper_128.onnx/resolve/main/inswapper_128.onnx",
            ],
        },
    },
}
