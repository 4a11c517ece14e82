"""PNG decode: OpenCV's path (pipeline/png_chunks.py, for whole, plain 8-bit files) against Pillow's, call
for call, through `decode_image` as the server calls it.

Why: the 29-face Solvay photograph is a 3 MB grayscale PNG, and on the H200 machine its decode (126-132
ms, Pillow) was the largest stage of the request, more than the 80 ms the issue's target allows for the
whole request. Pillow's path is taken by switching OpenCV's off for the baseline calls, so both decode
the same bytes through the same checks; they alternate call by call (bench/common.py's taking_turns).

    python -m bench.png_decode [--calls 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import cv2
import numpy as np

from bench.common import SHARED, table, taking_turns
from pipeline import ImageLimits, decode_image
from pipeline import images as images_module
from pipeline.png_chunks import png_layout


def cases() -> dict[str, bytes]:
    """The PNG photographs of ../shared, and a 1080p and a 4K colour frame made from a JPEG photograph."""
    found = {}
    for name in ("solvay_conference_1927.png", "newton.png"):
        path = SHARED / "images" / name
        if path.is_file():
            found[name] = path.read_bytes()
    photo = SHARED / "images" / "biden.jpg"
    if photo.is_file():
        face = cv2.imread(str(photo))
        for label, size in (("1080p RGB", (1920, 1080)), ("4K RGB", (3840, 2160))):
            ok, data = cv2.imencode(".png", cv2.resize(face, size), [cv2.IMWRITE_PNG_COMPRESSION, 3])
            found[label] = data.tobytes()
    return found


@contextlib.contextmanager
def pillow_only() -> Iterator[None]:
    """Pillow's path for every PNG, as before OpenCV decoded them (the baseline)."""
    kept = images_module._opencv_png
    images_module._opencv_png = lambda data, size: None
    try:
        yield
    finally:
        images_module._opencv_png = kept


def main(argv: list[str] | None = None) -> list[list[object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="calls of each decode per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    limits = ImageLimits()
    rows: list[list[object]] = []
    for name, data in cases().items():
        layout = png_layout(data)

        def pillow(data=data):
            with pillow_only():
                return decode_image(data, limits)

        new, old = decode_image(data, limits), pillow()
        same = np.array_equal(new.bgr, old.bgr) and (
            (new.alpha is None and old.alpha is None)
            or (new.alpha is not None and old.alpha is not None and np.array_equal(new.alpha, old.alpha)))
        for round_ in range(1, args.rounds + 1):
            # both were just decoded once each for the pixel check: no further warm-up call
            med = taking_turns({"opencv": lambda data=data: decode_image(data, limits), "pillow": pillow}, args.calls,
                               warm=False)
            rows.append([name, f"{layout.width}x{layout.height}" if layout else "?", "yes" if layout and layout.plain
                         else "no", round_, med["pillow"], med["opencv"], med["opencv"] / med["pillow"],
                         "yes" if same else "NO"])
    print(f"PNG decode through decode_image, {args.calls} alternating calls each per round (median ms)")
    print(table(["image", "size", "plain", "round", "Pillow ms", "OpenCV ms", "OpenCV / Pillow", "same pixels"], rows))
    return rows


if __name__ == "__main__":
    main()
