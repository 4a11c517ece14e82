"""Pixel boost: run a swapper of native size s on a face crop of k*s pixels.

The crop aligned at the boost size (k*s)^2 is split into k^2 interleaved, sub-sampled tiles of s^2
pixels each: tile number i*k + j is `crop[i::k, j::k]` (rows offset i, columns offset j), the order
FaceFusion's `implode_pixel_boost` / `explode_pixel_boost` use (reshape to (s, k, s, k, C) and move the
two k axes first). Each tile is a complete, slightly shifted low-resolution view of the face, so the
swapper sees what it was trained on; interleaving its k^2 outputs back gives a k*s crop whose detail
comes from k^2 separate model runs instead of one upscaled 128-pixel result.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidOptions

PIXEL_BOOSTS = (128, 256, 512, 1024)


def boost_factor(pixel_boost: int | None, native: int) -> int:
    """k = pixel_boost / native; InvalidOptions naming `pixel_boost` when it is not a whole multiple.
    (Which sizes a caller may ask for is checked once, in FuseOptions.)"""
    if pixel_boost is None:
        return 1
    if pixel_boost % native:
        raise InvalidOptions(f"pixel_boost must be a multiple of the swapper's size {native}, got {pixel_boost}")
    return pixel_boost // native


def implode(crop: np.ndarray, k: int) -> np.ndarray:
    """(k*s, k*s, C) -> (k*k, s, s, C): tile i*k + j is crop[i::k, j::k]."""
    size, channels = crop.shape[0], crop.shape[2]
    if crop.shape[1] != size or size % k:
        raise ValueError(f"a {crop.shape[1]}x{size} crop does not split into {k}x{k} tiles")
    s = size // k
    return np.ascontiguousarray(crop.reshape(s, k, s, k, channels).transpose(1, 3, 0, 2, 4).reshape(k * k, s, s, channels))


def explode(tiles: np.ndarray, k: int) -> np.ndarray:
    """The inverse of `implode`: (k*k, s, s, C) -> (k*s, k*s, C)."""
    count, s, _, channels = tiles.shape
    if count != k * k:
        raise ValueError(f"{count} tiles do not make a {k}x{k} boost")
    return np.ascontiguousarray(tiles.reshape(k, k, s, s, channels).transpose(2, 0, 3, 1, 4).reshape(k * s, k * s, channels))
