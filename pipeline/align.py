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
    """2x3 similarity (rotation, uniform scale, translation) mapping `src` points onto `dst`."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    spread = src_c.var(axis=0).sum()
    if spread == 0:  # all landmarks on one point: no transform exists
        return np.full((2, 3), np.nan)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:  # keep a rotation, not a reflection
        d[1] = -1
    u, s, vt = np.linalg.svd(cov)
    rot = u @ np.diag(d) @ vt
    scale = (s @ d) / spread
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * (rot @ src_mean)
    return matrix


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
