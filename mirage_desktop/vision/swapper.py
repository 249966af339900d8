"""inswapper_128: the identity swap, on an ArcFace-aligned 128 px crop, pasted back in the face box.

Pixel boost (``Settings.pixel_boost`` 256/384/512, i.e. a tile factor n of 2/3/4) aligns the crop
at 128·n px instead and splits it into n·n interleaved tiles ``crop[i::n, j::n]``: each tile is a
128 px view of the *whole* face, subsampled, which is what inswapper was trained on. Every tile is
swapped with the same latent and written back where it came from, so the swapped face has n times
the detail in each direction for n·n times the model's cost; the mask and the paste-back work at
the big size.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from ..errors import ModelError
from ..models.runtime import SessionHandle
from .align import align_matrix, warp_crop
from .blend import face_mask, paste_back
from .face import Face

log = logging.getLogger(__name__)


def read_emap(path: Path) -> np.ndarray:
    """The 512x512 embedding map stored as the last initializer of inswapper_128(.onnx|_fp16.onnx),
    cached (a warm start reads 1 MB instead of parsing the whole model with ``onnx``)."""
    import io

    from ..models import derived

    cached = derived.derived_path(Path(path), "emap", ".npy")
    if cached is not None and cached.is_file():
        try:
            emap = np.load(cached, allow_pickle=False)
            if emap.shape == (512, 512) and emap.dtype == np.float32:
                return emap
        except (OSError, ValueError):
            pass
    emap = _read_emap_now(Path(path))
    buf = io.BytesIO()
    np.save(buf, emap, allow_pickle=False)
    derived.store(cached, buf.getvalue())
    return emap


def _read_emap_now(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"{Path(path).name} cannot be read as ONNX ({' '.join(str(exc).split())[:120]})",
                         f"run `mirage models download --force {Path(path).stem}`") from exc
    if not model.graph.initializer:
        raise ModelError(f"{Path(path).name} has no initializers, so no emap", "use inswapper_128 from models.toml")
    emap = numpy_helper.to_array(model.graph.initializer[-1]).astype(np.float32)
    if emap.shape != (512, 512):
        raise ModelError(f"{Path(path).name}: last initializer has shape {emap.shape}, expected the 512x512 emap",
                         "use inswapper_128 from models.toml")
    return emap


def _to_bgr(chw: np.ndarray) -> np.ndarray:
    """CHW RGB [0,1] → HWC BGR uint8: the planes merged in BGR order (one interleaving pass, 6x
    faster than numpy's transposed copy: 0.16 → 0.03 ms a face, the same bytes), one conversion."""
    if chw.dtype != np.float32:
        chw = chw.astype(np.float32)  # an fp16 model's output
    img = cv2.merge((chw[2], chw[1], chw[0]))
    np.clip(img, 0.0, 1.0, out=img)  # convertScaleAbs alone would mirror negatives
    return cv2.convertScaleAbs(img, alpha=255.0)


def split_tiles(crop: np.ndarray, n: int) -> list[np.ndarray]:
    """The ``n*n`` interleaved tiles ``crop[i::n, j::n]`` of a crop, row-major in (i, j), each
    contiguous: every tile samples the whole face (every n-th pixel), not a corner of it."""
    return [np.ascontiguousarray(crop[i::n, j::n]) for i in range(n) for j in range(n)]


def merge_tiles(tiles: list[np.ndarray], n: int) -> np.ndarray:
    """The inverse of :func:`split_tiles`: tile ``k = i*n + j`` is written back to ``out[i::n, j::n]``."""
    if len(tiles) != n * n:
        raise ValueError(f"{len(tiles)} tiles for a {n}x{n} split")
    h, w = tiles[0].shape[:2]
    out = np.empty((h * n, w * n) + tiles[0].shape[2:], tiles[0].dtype)
    for k, tile in enumerate(tiles):
        i, j = divmod(k, n)
        out[i::n, j::n] = tile
    return out


def boost_factor(boost) -> int:
    """The tile factor n (1 = the plain 128 px path) as a checked int."""
    n = int(boost)
    if n < 1 or n != boost:
        raise ValueError(f"pixel boost factor must be a whole number >= 1, got {boost!r}")
    return n


class InSwapper:
    name = "inswapper"
    size = 128

    def __init__(self, handle: SessionHandle, emap: np.ndarray | None = None):
        from ..models import contract

        self.handle = handle
        dims = contract.check(handle, contract.INSWAPPER)
        self.size = int(dims.get("S", 128))
        self.output_name = handle.outputs[0].name
        self.emap = read_emap(handle.path) if emap is None else emap
        # the published file takes one face per call; an export with a free batch size takes all
        # the faces of a frame in one call (one launch on a GPU instead of one per face)
        batch = {i.name: i.shape[0] for i in handle.inputs}
        self.batchable = all(not (isinstance(b, int) and b > 0) for b in batch.values())

    def latent(self, embedding: np.ndarray) -> np.ndarray:
        """Source latent: normalised embedding · emap, L2-normalised again; shape (1, 512)."""
        e = np.asarray(embedding, np.float32).reshape(1, -1)
        e = e / max(float(np.linalg.norm(e)), 1e-12)
        lat = e @ self.emap
        return lat / max(float(np.linalg.norm(lat)), 1e-12)

    def swap_crop(self, crop_bgr: np.ndarray, latent: np.ndarray, metrics=None) -> np.ndarray:
        """Aligned BGR uint8 crop in, swapped BGR uint8 crop out."""
        blob = cv2.dnn.blobFromImage(crop_bgr, 1.0 / 255.0, (self.size, self.size), (0, 0, 0), swapRB=True)
        t = time.perf_counter()
        pred = self.handle.run({"target": blob, "source": latent}, [self.output_name])[0]
        if metrics is not None:
            metrics.record("swap.model", (time.perf_counter() - t) * 1000)
        return _to_bgr(pred[0])

    def swap_crop_boosted(self, crop_bgr: np.ndarray, latent: np.ndarray, n: int, metrics=None) -> np.ndarray:
        """A ``size*n`` aligned crop in, swapped at that size out: its ``n*n`` interleaved tiles
        swapped with the same latent (one call for all of them when the model is :attr:`batchable`,
        else one call each) and put back together. ``swap.model`` records the face's model time."""
        n = boost_factor(n)
        if crop_bgr.shape[:2] != (self.size * n, self.size * n):
            raise ValueError(f"a {crop_bgr.shape[1]}x{crop_bgr.shape[0]} crop for a {n}x{n} boost of "
                             f"{self.size} px tiles")
        lat = np.asarray(latent, np.float32).reshape(1, 512)
        pred = self._predict(split_tiles(crop_bgr, n), lat, metrics)
        return merge_tiles([_to_bgr(p) for p in pred], n)

    def _predict(self, crops: list[np.ndarray], lat: np.ndarray, metrics=None) -> np.ndarray:
        """The model on ``size`` px crops, a latent row each (``lat`` has one row per crop, or one
        for all): one batched call when the model is :attr:`batchable`, else one call per crop.
        Returns the (len(crops), 3, size, size) prediction; ``swap.model`` records the total time."""
        rows = np.ascontiguousarray(np.broadcast_to(lat, (len(crops), 512)), np.float32)
        size = (self.size, self.size)
        if self.batchable:
            blob = cv2.dnn.blobFromImages(crops, 1.0 / 255.0, size, (0, 0, 0), swapRB=True)
            t = time.perf_counter()
            pred = self.handle.run({"target": blob, "source": rows}, [self.output_name])[0]
        else:
            blobs = [cv2.dnn.blobFromImage(c, 1.0 / 255.0, size, (0, 0, 0), swapRB=True) for c in crops]
            t = time.perf_counter()
            pred = np.concatenate([self.handle.run({"target": b, "source": rows[k:k + 1]}, [self.output_name])[0]
                                   for k, b in enumerate(blobs)])
        if metrics is not None:
            metrics.record("swap.model", (time.perf_counter() - t) * 1000)
        return pred

    @staticmethod
    def _count_boost(metrics, n: int) -> None:
        """The ``swap.boost`` gauge: model runs per face (n*n tiles; 1 without pixel boost)."""
        if metrics is not None and hasattr(metrics, "set_gauge"):
            metrics.set_gauge("swap.boost", n * n)

    def swap_many(self, frame: np.ndarray, faces: list[Face], latent: np.ndarray, *, mouth_mask: bool = False,
                  color_fn=None, metrics=None, mask_fn=None, boost: int = 1) -> list:
        """:meth:`swap` for several faces; one model call for all of them when the model is
        :attr:`batchable` (with ``boost`` n > 1, one call of faces·n·n tiles). ``latent`` is one
        (1, 512) latent for every face or one row per face (n, 512). Returns each face's box (None
        for one off the frame)."""
        n = boost_factor(boost)
        lat = np.asarray(latent, np.float32).reshape(-1, 512)
        if lat.shape[0] not in (1, len(faces)):
            raise ValueError(f"{lat.shape[0]} latents for {len(faces)} faces")
        lat = np.broadcast_to(lat, (len(faces), 512))  # a row per face
        if not self.batchable or len(faces) < 2:
            return [self.swap(frame, f, lat[i:i + 1], mouth_mask=mouth_mask, color_fn=color_fn, metrics=metrics,
                              mask_fn=mask_fn, boost=n) for i, f in enumerate(faces)]
        size = self.size * n
        ms = [align_matrix(f.kps, size) for f in faces]
        crops = [warp_crop(frame, m, size) for m in ms]  # all read before any is pasted
        k = n * n
        tiles = crops if n == 1 else [t for c in crops for t in split_tiles(c, n)]
        pred = self._predict(tiles, np.repeat(lat, k, axis=0), metrics)  # a face's latent for each of its tiles
        fakes = [_to_bgr(pred[i]) if n == 1 else merge_tiles([_to_bgr(p) for p in pred[i * k:(i + 1) * k]], n)
                 for i in range(len(faces))]
        self._count_boost(metrics, n)
        base = face_mask(size, mouth_mask)
        boxes = []
        for i, (m, crop) in enumerate(zip(ms, crops)):
            fake = fakes[i]
            mask = base if mask_fn is None else mask_fn(faces[i], crop, base)
            if color_fn is not None:
                fake = color_fn(fake, crop, mask, faces[i])
            boxes.append(paste_back(frame, fake, m, mask))
        return boxes

    def swap(self, frame: np.ndarray, face: Face, latent: np.ndarray, *, mouth_mask: bool = False,
             color_fn=None, metrics=None, mask_fn=None, boost: int = 1) -> tuple | None:
        """Swap ``face`` in ``frame`` in place; only the face's box is touched. Returns that box.

        ``boost`` n > 1 swaps a 128·n px crop as n·n interleaved tiles (:meth:`swap_crop_boosted`);
        the mask, ``mask_fn``, ``color_fn`` and the paste-back then work at that size. 1 is the
        plain 128 px path.

        ``mask_fn(face, crop, mask)``, when given, returns the blend mask to use instead of the
        feathered oval ``mask`` (float32 0..1, the crop's size), e.g. narrowed by a face parser.
        ``color_fn(swapped, crop, mask, face)`` re-colours the swapped crop (the face tells a
        per-track colour match whose statistics to smooth)."""
        n = boost_factor(boost)
        size = self.size * n
        m = align_matrix(face.kps, size)
        crop = warp_crop(frame, m, size)
        if n == 1:
            fake = self.swap_crop(crop, latent, metrics)
        else:
            fake = self.swap_crop_boosted(crop, latent, n, metrics)
        self._count_boost(metrics, n)
        mask = face_mask(size, mouth_mask)
        if mask_fn is not None:
            mask = mask_fn(face, crop, mask)
        if color_fn is not None:
            fake = color_fn(fake, crop, mask, face)
        return paste_back(frame, fake, m, mask)
