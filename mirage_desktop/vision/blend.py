"""Paste-back and masks. Everything here works on the face's bounding box, never the full frame.

Masks are built once in the aligned crop's own coordinates (the face is always in the same
place there) and cached, so the per-frame cost is two small ``warpAffine`` calls and one
blend over the face's region of interest.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from .align import arcface_template, invert_affine, transform_points


@functools.lru_cache(maxsize=32)
def face_mask(size: int, mouth: bool = False) -> np.ndarray:
    """Feathered face-oval mask (float32 0..1) for an ArcFace-aligned crop of ``size`` px.

    With ``mouth=True`` the region around the mouth is cut out, so the user's own mouth stays
    visible and speech looks natural.
    """
    t = arcface_template(size)
    eyes_mid = (t[0] + t[1]) / 2
    mouth_mid = (t[3] + t[4]) / 2
    eye_dist = float(np.linalg.norm(t[1] - t[0]))
    cx = float((eyes_mid[0] + mouth_mid[0]) / 2)
    cy = float((eyes_mid[1] + mouth_mid[1]) / 2) + 0.05 * eye_dist
    axes = (int(round(1.15 * eye_dist)), int(round(1.45 * eye_dist)))
    m = np.zeros((size, size), np.float32)
    cv2.ellipse(m, (int(round(cx)), int(round(cy))), axes, 0, 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
    if mouth:
        mouth_w = float(np.linalg.norm(t[4] - t[3]))
        mc = (int(round(mouth_mid[0])), int(round(mouth_mid[1] + 0.08 * mouth_w)))
        cv2.ellipse(m, mc, (int(round(0.85 * mouth_w)), int(round(0.5 * mouth_w))), 0, 0, 360, 0.0, -1,
                    lineType=cv2.LINE_AA)
    sigma = max(1.0, size / 40.0)
    m = cv2.GaussianBlur(m, (0, 0), sigma)
    m.setflags(write=False)
    return m


def roi_of(m: np.ndarray, size: int, frame_shape: tuple) -> tuple[int, int, int, int] | None:
    """Frame-space box (x0, y0, x1, y1) covered by a ``size`` crop aligned with ``m``."""
    im = invert_affine(m)
    corners = transform_points(im, np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64))
    h, w = frame_shape[:2]
    x0 = max(int(np.floor(corners[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(corners[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 1, w)
    y1 = min(int(np.ceil(corners[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def paste_back(frame: np.ndarray, crop: np.ndarray, m: np.ndarray, mask: np.ndarray) -> tuple | None:
    """Blend the aligned ``crop`` (made with matrix ``m``) back into ``frame`` in place.

    Only the face's box is read and written. Returns that box, or None if it is off-frame.
    """
    size = crop.shape[0]
    box = roi_of(m, size, frame.shape)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    im = invert_affine(m)
    im[:, 2] -= (x0, y0)
    w, h = x1 - x0, y1 - y0
    # one warp for colour and mask together: the crop with the mask as a 4th channel
    # (cv2.merge/split: measured faster than two warps, and than numpy stacking and slicing)
    warped = cv2.warpAffine(cv2.merge([crop, _mask_u8(mask)]), im, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    b, g, r, a8 = cv2.split(warped)
    alpha = a8.astype(np.float32) * (1.0 / 255.0)
    roi = frame[y0:y1, x0:x1]
    roi[:] = cv2.blendLinear(cv2.merge([b, g, r]), roi, alpha, 1.0 - alpha)
    return box


_MASK_U8: dict[int, np.ndarray] = {}


def _mask_u8(mask: np.ndarray) -> np.ndarray:
    """uint8 copy of a (cached, read-only) float mask, itself cached by identity."""
    key = id(mask)
    hit = _MASK_U8.get(key)
    if hit is None or hit[0] is not mask:
        hit = (mask, np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if len(_MASK_U8) > 64:
            _MASK_U8.clear()
        _MASK_U8[key] = hit
    return hit[1]


@functools.lru_cache(maxsize=8)
def _ai_badge(height: int) -> tuple[np.ndarray, np.ndarray]:
    scale = max(height / 720.0, 0.35)
    font, thick = cv2.FONT_HERSHEY_DUPLEX, max(1, int(round(2 * scale)))
    (tw, th), base = cv2.getTextSize("AI", font, 1.1 * scale, thick)
    pad = int(round(8 * scale))
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    badge = np.zeros((bh, bw, 3), np.uint8)
    badge[:] = (40, 40, 40)
    cv2.putText(badge, "AI", (pad, pad + th), font, 1.1 * scale, (255, 255, 255), thick, cv2.LINE_AA)
    alpha = np.full((bh, bw), 0.8, np.float32)
    return badge, alpha


def draw_ai_mark(frame: np.ndarray) -> None:
    """A visible "AI" badge in the bottom-right corner (in place, touches only the badge's box)."""
    h, w = frame.shape[:2]
    badge, alpha = _ai_badge(h)
    bh, bw = badge.shape[:2]
    margin = max(4, h // 60)
    if bh + margin > h or bw + margin > w:
        return
    y0, x0 = h - bh - margin, w - bw - margin
    roi = frame[y0:y0 + bh, x0:x0 + bw]
    roi[:] = cv2.blendLinear(badge, roi, alpha, 1.0 - alpha)
