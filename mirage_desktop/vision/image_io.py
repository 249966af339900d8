"""Loading photos a person hands us: every failure is one line that says what to do."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputImageError, WriteError

MAX_SIDE = 2048  # analysis never needs more; huge photos are scaled down on load
MAX_PIXELS = 100_000_000  # 10000x10000; checked from the header, before anything is decoded (and by
# OpenCV's own guard, OPENCV_IO_MAX_IMAGE_PIXELS, set in mirage_desktop/__init__.py before cv2 loads)
MAX_FILE_BYTES = 512 << 20  # no photo is this big; a file that is is not read into memory
WRITE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


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
            size = p.stat().st_size
            if size > MAX_FILE_BYTES:
                raise InputImageError(f"{name} is {size / 2**20:.0f} MB, too big for a photo",
                                      f"use a photo under {MAX_FILE_BYTES >> 20} MB (JPEG or PNG)")
            data = p.read_bytes()
        except OSError as exc:
            raise InputImageError(f"{name} cannot be read ({exc.strerror})", "check its permissions") from None
    if not data:
        raise InputImageError(f"{name} is empty (0 bytes)", "pick another photo or re-export it")
    dims = image_size_from_header(data)
    if dims is not None and dims[0] * dims[1] > MAX_PIXELS:
        raise InputImageError(f"{name} is {dims[0]}x{dims[1]} ({dims[0] * dims[1] / 1e6:.0f} megapixels), more "
                              f"than the {MAX_PIXELS // 1_000_000} megapixels Mirage reads",
                              "scale it down (a face needs far fewer pixels)")
    buf = np.frombuffer(data, np.uint8)
    # IMREAD_UNCHANGED keeps 16-bit depth and alpha, but skips EXIF rotation; read the
    # orientation with a second, cheap colour decode's semantics by applying it ourselves.
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    except cv2.error:  # OpenCV's own size guard, or a decoder failing on a damaged file
        img = None
    if img is None:
        raise InputImageError(f"{name} is not a readable image (corrupt or unsupported format)",
                              "save it again as JPEG or PNG")
    if img.size == 0:
        raise InputImageError(f"{name} has no pixels", "pick another photo")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise InputImageError(f"{name} is too large ({img.shape[1]}x{img.shape[0]})",
                              f"scale it below {MAX_PIXELS // 1_000_000} megapixels")
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


def check_image_target(path: str | os.PathLike) -> str:
    """The format ``path`` will be written in, or a WriteError before any work is done: an unknown
    extension, a folder, a folder that cannot be written."""
    from ..fsutil import check_writable_target

    p = Path(path)
    ext = p.suffix.lower()
    if ext not in WRITE_EXTS and not p.is_dir():  # before any folder is made for it
        raise WriteError(f"cannot write image {p}: {ext or 'a name without an extension'} is not an image format "
                         f"Mirage writes", f"end the name with {', '.join(WRITE_EXTS)}")
    check_writable_target(p, "image")
    return ext


def save_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write atomically; the format follows the extension (one of WRITE_EXTS)."""
    from ..fsutil import atomic_write_bytes

    ext = check_image_target(path)
    try:
        ok, enc = cv2.imencode(ext, img)
    except cv2.error:
        ok = False
    if not ok:
        raise WriteError(f"cannot encode the image as {ext}", "use .png or .jpg")
    atomic_write_bytes(path, enc.tobytes(), "image")


def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the first bytes of a PNG, JPEG, GIF, BMP, WebP, TIFF or PNM file,
    without decoding it; None when the format is not one of those or the header is damaged."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if data[:1] == b"P" and data[1:2] in b"123456":
            fields = data[2:256].split()
            nums = [f for f in fields if not f.startswith(b"#")][:2]
            return int(nums[0]), int(nums[1])
    except (struct.error, ValueError, IndexError):
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        while i + 1 < n and data[i + 1] == 0xFF:  # fill bytes may pad any marker
            i += 1
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker in (0xD9, 0xDA):
            return None
        i += 2 + seg
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        b = int.from_bytes(data[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    e = "<" if data[:2] == b"II" else ">"
    off = struct.unpack(e + "I", data[4:8])[0]
    count = struct.unpack(e + "H", data[off:off + 2])[0]
    w = h = None
    for k in range(count):
        p = off + 2 + 12 * k
        tag, typ = struct.unpack(e + "HH", data[p:p + 4])
        val = struct.unpack(e + ("H" if typ == 3 else "I"), data[p + 8:p + (10 if typ == 3 else 12)])[0]
        if tag == 256:
            w = val
        elif tag == 257:
            h = val
    return (w, h) if w and h else None
