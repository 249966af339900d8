"""Face alignment: 5-point similarity transforms to the ArcFace / inswapper / FFHQ templates."""

from __future__ import annotations

import numpy as np

# ArcFace 112x112 template (left eye, right eye, nose tip, left mouth corner, right mouth corner).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# FFHQ 512x512 template used by GFPGAN / CodeFormer.
FFHQ_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=np.float64,
)


def arcface_template(size: int) -> np.ndarray:
    """ArcFace template scaled the way insightface does for ``size`` (112, 128, 224, ...)."""
    if size % 112 == 0:
        return ARCFACE_112 * (size / 112.0)
    ratio = size / 128.0
    t = ARCFACE_112 * ratio
    t[:, 0] += 8.0 * ratio
    return t


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    The closed form of Umeyama's method in 2-D: with centred points, a = Σ(x·u + y·v) / Σ|p|²,
    b = Σ(x·v − y·u) / Σ|p|², and the matrix is [[a, −b, tx], [b, a, ty]]. No SVD per frame.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    den = float((s0 * s0).sum()) or 1.0
    a = float((s0[:, 0] * d0[:, 0] + s0[:, 1] * d0[:, 1]).sum()) / den
    b = float((s0[:, 0] * d0[:, 1] - s0[:, 1] * d0[:, 0]).sum()) / den
    return np.array([[a, -b, mu_d[0] - a * mu_s[0] + b * mu_s[1]],
                     [b, a, mu_d[1] - b * mu_s[0] - a * mu_s[1]]], dtype=np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (closed-form 2x2 inverse: this runs several times a frame)."""
    a, b, c, d = m[0, 0], m[0, 1], m[1, 0], m[1, 1]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    tx, ty = m[0, 2], m[1, 2]
    return np.array([[ia, ib, -(ia * tx + ib * ty)], [ic, id_, -(ic * tx + id_ * ty)]], dtype=np.float64)


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def align_matrix(kps: np.ndarray, size: int, template: str = "arcface") -> np.ndarray:
    """2x3 matrix taking frame coordinates to an aligned ``size`` x ``size`` crop."""
    dst = arcface_template(size) if template == "arcface" else FFHQ_512 * (size / 512.0)
    return similarity_transform(kps, dst)


def warp_crop(frame: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
