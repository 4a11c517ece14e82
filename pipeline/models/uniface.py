"""UniFace (uniface_256, xc-csc101): the source goes in as a face crop, not an embedding.

Facts: FaceFusion `face_swapper/core.py` model set `uniface_256`: template ffhq_512, size 256, mean
0.5 and standard deviation 0.5 (RGB in -1..1), output denormalised the same way; source
(`prepare_source_frame`): the source face aligned on ffhq_512 at 256 x 256, RGB / 255 (0..1, no mean
or standard deviation), NCHW 1 x 3 x 256 x 256. `swapper_weight` does not apply. Licence: unknown.
"""

from __future__ import annotations

from .blendswap import BlendSwap


class UniFace(BlendSwap):
    kind = "uniface"
    template = "ffhq_512"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    denormalise_output = True
    source_template, source_size = "ffhq_512", 256
