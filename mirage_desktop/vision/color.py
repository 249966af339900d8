"""Colour transfer of the swapped face to the target's skin tone (Reinhard et al. 2001, in LAB).

The swapper's output carries the source identity's complexion and the model's own colour
cast; matching the per-channel mean and standard deviation in LAB, measured inside the face
mask only, brings it to the lighting and skin tone of the person in the frame. At 128 px this
is two colour conversions and a few reductions: well under a millisecond.
"""

from __future__ import annotations

import cv2
import numpy as np

# Per-channel std ratios are clamped so a flat or tiny region cannot blow the colours up.
_RATIO_MIN, _RATIO_MAX = 0.5, 2.0


def _lab(img: np.ndarray) -> np.ndarray:
    """uint8 BGR → float32 LAB (L 0..100, a/b about -127..127)."""
    return cv2.cvtColor(img.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_BGR2LAB)


def _weights(mask: np.ndarray | None, shape: tuple) -> np.ndarray:
    if mask is None:
        return np.ones(shape[:2], np.float32)
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3:
        m = m[..., 0]
    if m.max(initial=0.0) > 1.0:  # a uint8 0..255 mask
        m = m * (1.0 / 255.0)
    if m.shape != tuple(shape[:2]):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(m, 0.0, 1.0)


def lab_stats(img_bgr: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mask-weighted per-channel (mean, std) of ``img_bgr`` in LAB, each shape (3,)."""
    lab = _lab(img_bgr).reshape(-1, 3)
    w = _weights(mask, img_bgr.shape).reshape(-1)
    total = float(w.sum())
    if total < 1e-6:
        raise ValueError("the mask is empty")
    mean = (lab * w[:, None]).sum(0) / total
    var = (((lab - mean) ** 2) * w[:, None]).sum(0) / total
    return mean, np.sqrt(np.maximum(var, 0.0))


def match_color(swapped_bgr: np.ndarray, target_bgr: np.ndarray, mask: np.ndarray | None = None,
                strength: float = 1.0) -> np.ndarray:
    """Return ``swapped_bgr`` re-coloured so its LAB mean/std inside ``mask`` match ``target_bgr``'s.

    Both crops are the same aligned view (e.g. the inswapper output and the 128 px crop it was
    made from); ``mask`` (float 0..1 or uint8, crop-sized or resizable to it) selects the skin
    to measure, e.g. :func:`mirage_desktop.vision.blend.face_mask`. The transfer is applied to
    the whole crop (paste-back masks it anyway). ``strength`` 0..1 blends towards the original.
    An empty mask returns the input unchanged.
    """
    if swapped_bgr.shape[:2] != target_bgr.shape[:2]:
        target_bgr = cv2.resize(target_bgr, (swapped_bgr.shape[1], swapped_bgr.shape[0]),
                                interpolation=cv2.INTER_AREA)
    strength = min(max(float(strength), 0.0), 1.0)
    if strength == 0.0:
        return swapped_bgr.copy()
    try:
        mu_s, sd_s = lab_stats(swapped_bgr, mask)
        mu_t, sd_t = lab_stats(target_bgr, mask)
    except ValueError:
        return swapped_bgr.copy()
    ratio = np.clip(sd_t / np.maximum(sd_s, 1e-3), _RATIO_MIN, _RATIO_MAX).astype(np.float32)
    if strength < 1.0:
        ratio = 1.0 + strength * (ratio - 1.0)
        mu_t = mu_s + strength * (mu_t - mu_s)
    lab = _lab(swapped_bgr)
    lab = (lab - mu_s.astype(np.float32)) * ratio + mu_t.astype(np.float32)
    lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
    out = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
