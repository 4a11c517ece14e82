"""Paste a swapped face crop back into the frame, touching only the face's region.

insightface's `INSwapper.get(paste_back=True)` warps the crop, a white mask and a difference map over
the whole frame, erodes and blurs full-frame masks, and computes a difference mask it never uses. The
result differs from the input only near the face, so we do the same operations (same thresholds,
kernel sizes and blend) inside the face's bounding box plus a margin wide enough for the erosion and
blur to see only zeros at its edge. The output is the same as insightface's within rounding of the
warp, and every pixel outside the region is untouched.

The box's padding and feather are options (pipeline/masks.py; the defaults are insightface's), and
further crop-space masks (occlusion, region) are warped with the crop and combined with the box as the
element-wise minimum, still only inside the region.

Several large faces of a frame (`paste_all`) are pasted side by side where their regions are disjoint:
the warps, the feathering and the blend are OpenCV calls (and NumPy loops over large arrays) that release
the GIL, so a few threads share the work of a high-resolution group photograph. Faces whose regions meet
keep their order (`disjoint_waves`), so the image is the one a face-by-face loop gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from . import overlap
from .masks import DEFAULT_MASKS, MaskOptions, box_square, feather_kernels


def _region(inverse: np.ndarray, crop_size: int, frame_shape: tuple[int, ...],
            blur: float = DEFAULT_MASKS.blur) -> tuple[int, int, int, int] | None:
    corners = np.array([[0, 0, 1], [crop_size, 0, 1], [0, crop_size, 1], [crop_size, crop_size, 1]], dtype=np.float64)
    pts = corners @ inverse.T
    x_min, y_min = np.floor(pts.min(axis=0)).astype(int)
    x_max, y_max = np.ceil(pts.max(axis=0)).astype(int)
    extent = int(max(x_max - x_min, y_max - y_min))
    # erosion reaches k//2 (k = max(extent//10, 10) by default); the blur its half-width + its centre.
    erode, spread = feather_kernels(extent, blur)
    pad = erode // 2 + spread + 4
    height, width = frame_shape[:2]
    x0, y0 = max(x_min - pad, 0), max(y_min - pad, 0)
    x1, y1 = min(x_max + pad, width), min(y_max + pad, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def paste_region(matrix: np.ndarray, crop_size: int, frame_shape: tuple[int, ...],
                 masks: MaskOptions = DEFAULT_MASKS) -> tuple[int, int, int, int] | None:
    """The frame box `paste_back` may touch for a crop aligned with `matrix` (frame -> crop): the crop's
    footprint plus the feather's margin. It also holds every pixel a bilinear warp of the crop out of the
    frame reads, so two faces whose regions are disjoint neither read nor write each other's pixels."""
    return _region(cv2.invertAffineTransform(matrix), crop_size, frame_shape, masks.blur)


def _sampling_maps(crop_to_frame: np.ndarray, region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates in the crop for every frame pixel of `region`, as warpAffine computes them."""
    x0, y0, x1, y1 = region
    frame_to_crop = cv2.invertAffineTransform(crop_to_frame).astype(np.float32)
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)
    map_x = (frame_to_crop[0, 1] * ys + frame_to_crop[0, 2])[:, None] + frame_to_crop[0, 0] * xs[None, :]
    map_y = (frame_to_crop[1, 1] * ys + frame_to_crop[1, 2])[:, None] + frame_to_crop[1, 0] * xs[None, :]
    return map_x, map_y


def _warp(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def paste_back(frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, masks: MaskOptions = DEFAULT_MASKS,
               crop_masks: Sequence[np.ndarray] = (), region: tuple[int, int, int, int] | None = None,
               ) -> tuple[int, int, int, int] | None:
    """Blend `crop` (aligned with `matrix`, frame -> crop) into `frame` in place; returns the region.

    `masks` shapes the box (when `box` is among its types); `crop_masks` are further crop-sized masks in
    0..1 (occlusion, region) combined with it as the minimum. `region`: `paste_region`'s, where the
    caller has it already (`paste_all`).
    """
    crop_size = crop.shape[0]
    crop_to_frame = cv2.invertAffineTransform(matrix)
    region = region or _region(crop_to_frame, crop_size, frame.shape, masks.blur)
    if region is None:
        return None
    x0, y0, x1, y1 = region
    maps = _sampling_maps(crop_to_frame, region)
    warped = _warp(crop, maps)
    if masks.box:
        mask = _warp(box_square(crop_size, masks.padding), maps)
        mask[mask > 20] = 255
        rows = np.nonzero((mask == 255).any(axis=1))[0]
        cols = np.nonzero((mask == 255).any(axis=0))[0]
        if rows.size == 0:
            return None
        mask_size = int(np.sqrt((rows[-1] - rows[0]) * (cols[-1] - cols[0])))
        erode, spread = feather_kernels(mask_size, masks.blur)
        if erode > 1:
            mask = cv2.erode(mask, np.ones((erode, erode), np.uint8), iterations=1)
        if spread > 0:
            mask = cv2.GaussianBlur(mask, (2 * spread + 1, 2 * spread + 1), 0)
        mask /= 255
    else:
        mask = np.ones((y1 - y0, x1 - x0), dtype=np.float32)
    for extra in crop_masks:
        np.minimum(mask, _warp(extra.astype(np.float32, copy=False), maps), out=mask)
    roi = frame[y0:y1, x0:x1]
    # insightface's blend, mask * face + (1 - mask) * frame, in one OpenCV call: it runs without the GIL
    # (several requests' pastes overlap; NumPy's float temporaries held it for most of the paste) and
    # 9x faster than the NumPy expression on a 900x800 region; it rounds where NumPy's cast truncated,
    # so pixels differ by at most one grey level
    roi[:] = cv2.blendLinear(warped, roi, mask, 1.0 - mask)
    return region


Region = tuple[int, int, int, int]


def regions_meet(a: Region, b: Region) -> bool:
    """Whether two (x0, y0, x1, y1) boxes, ends exclusive, share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def disjoint_waves(regions: Sequence[Region | None]) -> list[list[int]]:
    """Indices grouped so that each group's regions are pairwise disjoint and doing the groups in order
    gives what doing the indices in order gives: an index goes one wave past the latest earlier index
    whose region meets its own (None: touches nothing, wave 0)."""
    level: list[int] = []
    for j, r in enumerate(regions):
        before = [level[i] for i, q in enumerate(regions[:j]) if r is not None and q is not None and regions_meet(q, r)]
        level.append(max(before, default=-1) + 1)
    return [[i for i, lv in enumerate(level) if lv == wave] for wave in range(max(level, default=-1) + 1)]


# a face's paste goes to a helper only when its region is this large: a small face's paste is mostly
# NumPy bookkeeping under the GIL, and handing it to a thread cost more than it saved (the Solvay
# photograph's 29 faces of ~100 px: 0.94x with two threads; six 4K faces of ~400 px: 1.32x)
THREADED_MIN_PIXELS = 300 * 300


def paste_all(frame: np.ndarray, pastes: Sequence[tuple[np.ndarray, np.ndarray, Sequence[np.ndarray]]],
              masks: MaskOptions = DEFAULT_MASKS) -> None:
    """`paste_back` of every (crop, matrix, crop_masks) into `frame`: faces with disjoint regions side by
    side, faces whose regions meet in their order, so the image is the one a loop over `pastes` gives.

    Side by side means this thread and overlap's helper threads that are free (pipeline/overlap.py: under
    load the paste stays in the request's thread rather than queue behind other requests' work)."""
    side_by_side = len(pastes) > 1 and overlap.HELPER_THREADS > 1
    regions = [paste_region(matrix, crop.shape[0], frame.shape, masks) for crop, matrix, _ in pastes] if side_by_side else []

    def paste_group(group: Sequence[int]) -> None:
        for i in group:
            crop, matrix, crop_masks = pastes[i]
            paste_back(frame, crop, matrix, masks, crop_masks, regions[i] if regions else None)

    if not any(_pixels(region) >= THREADED_MIN_PIXELS for region in regions):
        # nothing for a helper (one face, one thread, or only small faces as in a group photograph): one
        # loop, without finding the waves, which compares every pair of faces
        paste_group(range(len(pastes)))
        return
    for wave in disjoint_waves(regions):
        overlap.each(paste_group, _groups(wave, regions))  # returns once no helper still writes into the frame


def _groups(wave: list[int], regions: Sequence[Region | None]) -> list[list[int]]:
    """A wave's faces as the items threads take in turn: each large face on its own, largest first (the
    longest pastes begin first, so no thread is left with one at the end), then the small ones together,
    one hand-off for all of them."""
    large = sorted((i for i in wave if _pixels(regions[i]) >= THREADED_MIN_PIXELS), key=lambda i: -_pixels(regions[i]))
    small = [i for i in wave if _pixels(regions[i]) < THREADED_MIN_PIXELS]
    return [*([i] for i in large), *([small] if small else [])]


def _pixels(region: Region | None) -> int:
    return 0 if region is None else (region[2] - region[0]) * (region[3] - region[1])
