"""Swapper family: milliseconds per face of each kind's pre- and post-processing around its graph.

Each kind runs its identity stand-in (the published fixed batch of 1, so one run per tile) on a random
aligned crop at every pixel boost its size allows: `swap_crop` (normalise, tiles, runs, denormalise,
interleave) and `prepare_source` (the converter for simswap and ghost, the source crop for blendswap
and uniface). The stand-ins' graphs do next to nothing, so the figures are our processing plus the
runtime's per-run overhead, not a real model's inference. Baseline, in the same run: the inswapper path
as it was before the swapper base class (cv2.dnn.blobFromImages in, `clip(255 * out)` back), on the
same inswapper stand-in.

Run: python -m bench.swappers [--repeat N]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import onnxruntime as ort

from bench.common import median_ms, table
from devtools.standins import identity_swapper_model
from devtools.swapper_standins import SWAPPER_KINDS, converter_model, swapper_model
from pipeline.boost import PIXEL_BOOSTS, explode, implode
from pipeline.faces import Face
from pipeline.identity import SourceIdentity
from pipeline.models import KINDS, EmbeddingConverter, FaceSwapper, InSwapper


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def build(kind: str) -> FaceSwapper:
    if kind == "inswapper":
        return InSwapper(_session(identity_swapper_model()), np.eye(512, dtype=np.float32))
    swapper = KINDS[kind](_session(swapper_model(kind, "identity")))
    assert isinstance(swapper, FaceSwapper)
    if swapper.needs_converter:
        swapper.converter = EmbeddingConverter(_session(converter_model()))
    return swapper


def baseline_swap_crop(swapper: InSwapper, crop: np.ndarray, latent: np.ndarray, k: int) -> np.ndarray:
    """The inswapper path before the base class: OpenCV's blob in, one run per tile, clip(255 * out) back."""
    tiles = implode(crop, k) if k > 1 else crop[None]
    size = swapper.input_size
    blob = cv2.dnn.blobFromImages(list(tiles), 1.0 / 255.0, (size, size), (0.0, 0.0, 0.0), swapRB=True)
    pred = np.concatenate([swapper.session.run([swapper.output_name], {swapper.target_name: tile[None],
                                                                      swapper.source_name: latent})[0] for tile in blob])
    rgb = np.ascontiguousarray(np.clip(255 * pred.transpose(0, 2, 3, 1), 0, 255).astype(np.uint8)[..., ::-1])
    return explode(rgb, k) if k > 1 else rgb[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)
    face = Face(bbox=np.array([200, 200, 400, 420], np.float32), score=1.0,
                kps=np.array([[260, 280], [340, 280], [300, 330], [265, 380], [335, 380]], np.float32))
    identity = SourceIdentity.average([(face, rng.standard_normal(512).astype(np.float32) * 20, image)])
    rows = []
    for kind in ("inswapper", *SWAPPER_KINDS):
        swapper = build(kind)
        source = swapper.prepare_source(identity)
        prepare = median_ms(lambda: swapper.prepare_source(identity), args.repeat)  # noqa: B023
        for boost in PIXEL_BOOSTS:
            if boost % swapper.input_size:
                continue
            k = boost // swapper.input_size
            crop = rng.integers(0, 256, (boost, boost, 3), dtype=np.uint8)
            ours = median_ms(lambda: swapper.swap_crop(crop, source, k), args.repeat)  # noqa: B023
            base = "–"
            if isinstance(swapper, InSwapper):
                assert np.array_equal(baseline_swap_crop(swapper, crop, source, k), swapper.swap_crop(crop, source, k))
                base = f"{median_ms(lambda: baseline_swap_crop(swapper, crop, source, k), args.repeat):.2f}"  # noqa: B023
            rows.append([kind, boost, k * k, ours, base, prepare])
    print(table(["kind", "pixel_boost", "runs", "swap_crop ms", "baseline ms (old inswapper path)",
                 "prepare_source ms"], rows))


if __name__ == "__main__":
    main()
