"""JPEG decode in strips (pipeline/jpeg_strip_decode.py) against one cv2.imdecode, call for call.

Why a bench of its own: bench.codec times each codec's rows one after the other, and a 4K decode's time
there moves by 2x with what the allocator did before (a fresh 25 MB buffer page-faults, a reused one
does not), which swamps the strips' gain. Here the two decodes alternate call by call (which goes
first alternates too), so both meet the same allocator and the same machine load; the ratio is the
median of the strips' times over the median of one piece's.

    python -m bench.strip_decode [--calls 40] [--rounds 3]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from bench.codec import build_images, with_restarts
from bench.common import SHARED, table, taking_turns
from pipeline import overlap
from pipeline.jpeg_strip_decode import decode_in_strips


def cases() -> dict[str, bytes]:
    """The bench's synthetic 1080p and 4K frames with a restart marker every MCU row, and the real
    photographs of ../shared that carry markers."""
    found = {}
    for name, data in build_images(["1080p", "4k"]).items():
        found[f"{name}+RST"] = with_restarts(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    for name in ("biden.jpg", "obama.jpg"):
        path = SHARED / "images" / name
        if path.is_file():
            found[name] = path.read_bytes()
    return found


def main(argv: list[str] | None = None) -> list[list[object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="calls of each decode per row")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows: list[list[object]] = []
    for data_name, data in cases().items():
        pixels = decode_in_strips(data)
        whole = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        cut_at_all = pixels is not None
        same = cut_at_all and np.array_equal(pixels, whole)
        for round_index in range(args.rounds):
            ms = taking_turns({"one": lambda d=data: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR),
                               "cut": lambda d=data: decode_in_strips(d)}, args.calls, warm=False)
            one_ms, cut_ms = ms["one"], ms["cut"]
            rows.append([data_name, f"{whole.shape[1]}x{whole.shape[0]}", round_index + 1, one_ms, cut_ms,
                         cut_ms / one_ms, "yes" if same else ("not cut" if not cut_at_all else "NO")])
    print(f"decode in strips against one cv2.imdecode, {args.calls} alternating calls each; "
          f"{overlap.HELPER_THREADS} helper threads (so at most {overlap.HELPER_THREADS} strips)")
    print(table(["image", "size", "round", "one piece ms", "strips ms", "strips / one", "same pixels"], rows))
    return rows


if __name__ == "__main__":
    main()
