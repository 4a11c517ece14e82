"""Paste back: ours (face region only) against insightface's INSwapper.get(paste_back=True), per face.

Both paste the same swapped crop with the same matrix; insightface's paste cost is measured as
get(paste_back=True) minus get(paste_back=False) on the same inputs. Then all faces of a frame pasted
one at a time against `paste_all` (disjoint faces side by side, on overlap's free helper threads), same crops, and
the stage table of a full request for a 1080p single-face JPEG. Run: python -m bench.paste_back [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
from types import SimpleNamespace

import cv2
import numpy as np

from bench.common import (
    SHARED,
    insightface_t1,
    median_ms,
    single_face_1080p,
    standin_models,
    table,
    taking_turns,
)
from pipeline import Settings, StageTimer, load_fuser, overlap
from pipeline.paste import disjoint_waves, paste_all, paste_back, paste_region


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from insightface.model_zoo.inswapper import INSwapper

    root = standin_models()
    fuser = load_fuser(Settings(model_path=root))
    ref = INSwapper(str(root / "test" / "swap.onnx"), session=fuser.swapper.session)
    obama = fuser.decode((SHARED / "images" / "obama.jpg").read_bytes())
    src = fuser.detect(obama)[0]
    src.embedding = fuser.embedder.embed(obama.bgr, src)
    src_ns = SimpleNamespace(normed_embedding=src.embedding)

    t1 = cv2.imread(str(insightface_t1()))
    solvay = cv2.imread(str(SHARED / "images" / "solvay_conference_1927.png"))
    uhd = cv2.resize(t1, (3840, 2160))
    rows = []
    for name, frame in (("t1 1280x886", t1), ("solvay 3000x2171", solvay), ("4k 3840x2160", uhd)):
        faces = fuser.detect(SimpleNamespace(bgr=frame))
        theirs, ours, worst = [], [], 0
        for face in faces:
            tgt = SimpleNamespace(kps=face.kps)
            crop, matrix = ref.get(frame, tgt, src_ns, paste_back=False)
            full = median_ms(lambda: ref.get(frame, tgt, src_ns, paste_back=True), args.repeat, warm=False)  # noqa: B023
            swap_only = median_ms(lambda: ref.get(frame, tgt, src_ns, paste_back=False), args.repeat, warm=False)  # noqa: B023
            theirs.append(max(full - swap_only, 0.0))
            copies = [frame.copy() for _ in range(args.repeat)]
            ours.append(median_ms(lambda: paste_back(copies.pop(), crop, matrix), args.repeat, warm=False))  # noqa: B023
            expected = ref.get(frame, tgt, src_ns, paste_back=True)
            mine = frame.copy()
            paste_back(mine, crop, matrix)
            worst = max(worst, int(np.abs(mine.astype(int) - expected.astype(int)).max()))
        a, b = statistics.mean(theirs), statistics.mean(ours)
        rows.append([name, len(faces), a, b, a / b, worst])
    print("paste back, ms per face (median of", args.repeat, "runs each)")
    print(table(["frame", "faces", "insightface ms", "ours ms", "speed-up", "max diff (grey levels)"], rows))

    rows = []
    for name, frame in (("t1 1280x886", t1), ("solvay 3000x2171", solvay), ("4k 3840x2160", uhd)):
        faces = fuser.detect(SimpleNamespace(bgr=frame))
        pastes = []
        for face in faces:
            crop, matrix = fuser.swapper.align(frame, face)
            pastes.append((255 - crop, matrix, []))
        waves = disjoint_waves([paste_region(m, c.shape[0], frame.shape) for c, m, _ in pastes])

        def loop(pastes=pastes, frame=frame) -> None:
            out = frame.copy()
            for crop, matrix, crop_masks in pastes:
                paste_back(out, crop, matrix, crop_masks=crop_masks)

        def together(pastes=pastes, frame=frame) -> None:
            paste_all(frame.copy(), pastes)
        copy_ms = median_ms(lambda frame=frame: frame.copy(), args.repeat)
        one, side = taking_turns({"loop": loop, "together": together}, args.repeat).values()
        rows.append([name, len(faces), len(waves), one - copy_ms, side - copy_ms, (one - copy_ms) / (side - copy_ms)])
    print(f"\nall faces of a frame, ms (median of {args.repeat}, the two taking turns; frame copy excluded), "
          f"HELPER_THREADS={overlap.HELPER_THREADS}")
    print(table(["frame", "faces", "waves", "one at a time", "paste_all", "speed-up"], rows))

    data = single_face_1080p()
    fuser.fuse_bytes(data, data)  # warm
    stages: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        timer = StageTimer()
        fuser._sources.clear()  # measure the uncached source path too
        fuser.fuse_bytes(data, data, timer=timer)
        for k, v in timer.ms.items():
            stages.setdefault(k, []).append(v)
    print("\nfull request, 1920x1080 JPEG, one face (source = target image; source cache cleared, so detect runs twice), ms")
    order = ["decode", "detect", "embed", "swap", "paste", "encode"]
    rows = [[k, statistics.median(stages[k])] for k in order if k in stages]
    rows.append(["total", sum(r[1] for r in rows)])
    print(table(["stage", "ms"], rows))


if __name__ == "__main__":
    main()
