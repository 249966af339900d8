"""Loading photos a person hands us: every failure is one line that says what to do."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputImageError

MAX_SIDE = 2048  # analysis never needs more; huge photos are scaled down on load
MAX_PIXELS = 200_000_000


def load_image(source: str | os.PathLike | bytes, max_side: int = MAX_SIDE) -> np.ndarray:
    """Decode a photo to 8-bit BGR, honouring EXIF rotation, scaled so its longer side <= max_side.

    Handles grayscale, 16-bit, alpha and CMYK images. Raises InputImageError on anything unusable.
    """
    name = "image" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        p = Path(source)
        if not p.exists():
            raise InputImageError(f"{name} does not exist", "check the path")
        if p.is_dir():
            raise InputImageError(f"{name} is a folder, not an image", "pick an image file")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise InputImageError(f"{name} cannot be read ({exc.strerror})", "check its permissions") from None
    if not data:
        raise InputImageError(f"{name} is empty (0 bytes)", "pick another photo or re-export it")
    buf = np.frombuffer(data, np.uint8)
    # IMREAD_UNCHANGED keeps 16-bit depth and alpha, but skips EXIF rotation; read the
    # orientation with a second, cheap colour decode's semantics by applying it ourselves.
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise InputImageError(f"{name} is not a readable image (corrupt or unsupported format)",
                              "save it again as JPEG or PNG")
    if img.size == 0:
        raise InputImageError(f"{name} has no pixels", "pick another photo")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise InputImageError(f"{name} is too large ({img.shape[1]}x{img.shape[0]})",
                              "scale it below 200 megapixels")
    img = _to_uint8(img)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    img = _apply_exif_orientation(img, _exif_orientation(data))
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype in (np.float32, np.float64):
        hi = float(np.nanmax(img)) if img.size else 1.0
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    info = np.iinfo(img.dtype)
    return ((img.astype(np.float64) - info.min) / (info.max - info.min) * 255).astype(np.uint8)


def _exif_orientation(data: bytes) -> int:
    """EXIF orientation tag (1..8) of a JPEG, or 1. A tiny parser: no Pillow needed."""
    if not data.startswith(b"\xff\xd8"):
        return 1
    i = 2
    n = len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        seg_len = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            tiff = data[i + 10:i + 2 + seg_len]
            if len(tiff) < 8:
                return 1
            endian = "little" if tiff[:2] == b"II" else "big"
            off = int.from_bytes(tiff[4:8], endian)
            if off + 2 > len(tiff):
                return 1
            count = int.from_bytes(tiff[off:off + 2], endian)
            for k in range(count):
                e = off + 2 + 12 * k
                if e + 12 > len(tiff):
                    break
                if int.from_bytes(tiff[e:e + 2], endian) == 0x0112:
                    val = int.from_bytes(tiff[e + 8:e + 10], endian)
                    return val if 1 <= val <= 8 else 1
            return 1
        if marker in (0xDA, 0xD9):  # start of scan / end: no more metadata
            break
        i += 2 + seg_len
    return 1


def _apply_exif_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.flip(cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE), 1)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE), 1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def save_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write atomically; the format follows the extension."""
    from ..fsutil import atomic_write_bytes

    ext = Path(path).suffix.lower() or ".png"
    ok, enc = cv2.imencode(ext, img)
    if not ok:
        raise InputImageError(f"cannot encode an image as {ext}", "use .png or .jpg")
    atomic_write_bytes(path, enc.tobytes())
