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


def _mask_u8(mask: np.ndarray | None, shape: tuple) -> np.ndarray | None:
    """The region to measure as a uint8 0/1 mask (weight >= 0.5), crop-sized; None = everything."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != tuple(shape[:2]):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    if m.dtype == np.uint8:
        thresh = 1 if m.max(initial=0) <= 1 else 128  # a 0/1 or a 0..255 mask
    else:
        thresh = 0.5
    return (m >= thresh).astype(np.uint8)


def _stats(lab: np.ndarray, m: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if m is not None and not m.any():
        raise ValueError("the mask is empty")
    mean, std = cv2.meanStdDev(lab, mask=m)
    return mean.reshape(3), std.reshape(3)


def lab_stats(img_bgr: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of ``img_bgr`` in LAB inside ``mask`` (weight >= 0.5), each shape (3,)."""
    return _stats(_lab(img_bgr), _mask_u8(mask, img_bgr.shape))


def match_color(swapped_bgr: np.ndarray, target_bgr: np.ndarray, mask: np.ndarray | None = None,
                strength: float = 1.0) -> np.ndarray:
    """Return ``swapped_bgr`` re-coloured so its LAB mean/std inside ``mask`` match ``target_bgr``'s.

    Both crops are the same aligned view (e.g. the inswapper output and the 128 px crop it was
    made from); ``mask`` (float 0..1, uint8 0..255 or 0/1; crop-sized or resizable to it;
    pixels weighing at least one half count) selects the skin to measure, e.g.
    :func:`mirage_desktop.vision.blend.face_mask`. The transfer is applied to the whole crop
    (paste-back masks it anyway). ``strength`` 0..1 blends towards the original.
    An empty mask returns the input unchanged.
    """
    if swapped_bgr.shape[:2] != target_bgr.shape[:2]:
        target_bgr = cv2.resize(target_bgr, (swapped_bgr.shape[1], swapped_bgr.shape[0]),
                                interpolation=cv2.INTER_AREA)
    strength = min(max(float(strength), 0.0), 1.0)
    if strength == 0.0:
        return swapped_bgr.copy()
    m = _mask_u8(mask, swapped_bgr.shape)
    lab = _lab(swapped_bgr)
    try:
        mu_s, sd_s = _stats(lab, m)
        mu_t, sd_t = _stats(_lab(target_bgr), m)
    except ValueError:
        return swapped_bgr.copy()
    return _apply(lab, mu_s, sd_s, mu_t, sd_t, strength)


def _apply(lab: np.ndarray, mu_s, sd_s, mu_t, sd_t, strength: float) -> np.ndarray:
    """``lab`` (float32 LAB) moved from statistics (mu_s, sd_s) to (mu_t, sd_t), as uint8 BGR."""
    ratio = np.clip(sd_t / np.maximum(sd_s, 1e-3), _RATIO_MIN, _RATIO_MAX)
    if strength < 1.0:
        ratio = 1.0 + strength * (ratio - 1.0)
        mu_t = mu_s + strength * (mu_t - mu_s)
    # (lab - mu_s) * ratio + mu_t, as one multiply-add per pixel
    lab = cv2.transform(lab, np.hstack([np.diag(ratio), (mu_t - mu_s * ratio)[:, None]]).astype(np.float32))
    lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
    out = np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR), 0.0, 1.0, out=None)
    return cv2.convertScaleAbs(out, alpha=255.0)  # rounds and saturates to uint8


class ColorTransfer:
    """:func:`match_color` for a live stream: the statistics are smoothed over time per face.

    The target's LAB mean and std, measured on every frame, move with sensor noise and with the
    face mask's edge, so the transfer — and the face's tone — would flicker frame to frame.
    Per track (``face.track_id``) the target's mean and std (the light and skin of the scene) are
    an exponential moving average; the swapped face's are this frame's, so an identity switch is
    not tinted by the one before. ``smoothing`` (0..0.95, ``Settings.color_smoothing``) is the
    weight of the past, 0 is the plain per-frame transfer. A face without a track, or a new
    one, starts from its own frame's statistics. Called by the swapper as
    ``color_fn(swapped, target, mask, face)``.
    """

    def __init__(self, smoothing: float = 0.8):
        self.smoothing = float(smoothing)
        self._state: dict[int, np.ndarray] = {}  # track id -> (4, 3): mu_s, sd_s, mu_t, sd_t
        self.last: np.ndarray | None = None  # the statistics last used (for tests and plots)

    def __call__(self, swapped_bgr: np.ndarray, target_bgr: np.ndarray, mask: np.ndarray | None = None,
                 face=None) -> np.ndarray:
        if swapped_bgr.shape[:2] != target_bgr.shape[:2]:
            target_bgr = cv2.resize(target_bgr, (swapped_bgr.shape[1], swapped_bgr.shape[0]),
                                    interpolation=cv2.INTER_AREA)
        m = _mask_u8(mask, swapped_bgr.shape)
        lab = _lab(swapped_bgr)
        try:
            now = np.stack([*_stats(lab, m), *_stats(_lab(target_bgr), m)])
        except ValueError:
            return swapped_bgr.copy()
        key = int(getattr(face, "track_id", -1)) if face is not None else -1
        a = min(max(self.smoothing, 0.0), 0.95)
        prev = self._state.get(key) if key >= 0 else None
        stats = now.copy()
        if prev is not None and a > 0.0:  # the target's (the scene's) statistics only: the swapped face's
            stats[2:] = a * prev[2:] + (1.0 - a) * now[2:]  # are this frame's, so a new identity is not tinted
        if key >= 0:
            if len(self._state) > 64:
                self._state.clear()  # tracks come and go: never grows without bound
            self._state[key] = stats
        self.last = stats
        return _apply(lab, stats[0], stats[1], stats[2], stats[3], 1.0)

    def reset(self) -> None:
        self._state.clear()
