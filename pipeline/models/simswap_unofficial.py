"""simswap_unofficial_512: SimSwap at 512 pixels, with its own normalisation.

Facts: FaceFusion `face_swapper/core.py` model set `simswap_unofficial_512`: type simswap (so the
same converted, normalised source as simswap_256, through `crossface_simswap`), template
arcface_112_v1, size 512, but mean 0 and standard deviation 1 (RGB in 0..1); output in 0..1.
Licence: non-commercial.
"""

from __future__ import annotations

from .simswap import SimSwap


class SimSwapUnofficial(SimSwap):
    kind = "simswap_unofficial"
    default_input_size = (512, 512)
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
