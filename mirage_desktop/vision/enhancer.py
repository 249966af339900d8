"""Face enhancement: CodeFormer (torch) or GFPGAN (ONNX) on the face crop only, and the
real-time stage that runs one of them every frame or every k-th frame.

Every enhancer fulfils the same small contract (checked by :func:`check_enhancer` when it is
loaded):

``name``            short name ("codeformer", "gfpgan")
``size``            side of the square FFHQ-aligned crop it takes and returns (512)
``provider``        where it runs ("cuda:0 fp16", "CPUExecutionProvider", ...)
``supports_fidelity``  whether :meth:`set_fidelity` changes anything
``enhance(crop)``   uint8 BGR (size, size, 3) → uint8 BGR (size, size, 3)
``set_fidelity(w)`` 0.0–1.0; a no-op where the model has no such knob

:class:`EnhanceStage` FFHQ-aligns a crop per face from the current frame, enhances it every
``interval``-th frame per track (otherwise re-uses that track's last enhanced crop, kept in
aligned space, so re-use is one warp with the current frame's matrix and the result follows
the face), blends raw and enhanced by ``blend`` and pastes back inside the face's region only
(:func:`paste_region`: the detector's box joined with what the swap changed, so the chin below
a tight box is enhanced like the rest of the swapped face).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from ..errors import ModelError
from ..metrics import Metrics
from .align import FFHQ_512, align_matrix, invert_affine, warp_crop
from .blend import swap_region
from .face import Face
from .slot import TrackWorker

log = logging.getLogger(__name__)

from ..config import ENHANCER_KINDS  # noqa: E402  (declared once, with the settings)
REGISTRY_NAMES = {"codeformer": "codeformer", "gfpgan": "gfpgan_1_4"}
DEFAULT_FIDELITY = 0.75


@runtime_checkable
class Enhancer(Protocol):
    name: str
    size: int
    provider: str
    supports_fidelity: bool

    def enhance(self, crop: np.ndarray) -> np.ndarray: ...

    def set_fidelity(self, w: float) -> None: ...


_CONTRACT = ("name", "size", "provider", "supports_fidelity", "enhance", "set_fidelity")


def check_enhancer(obj: Any) -> Any:
    """Return ``obj`` if it fulfils the enhancer contract, else raise ModelError naming what is missing."""
    missing = [a for a in _CONTRACT if not hasattr(obj, a)]
    not_callable = [a for a in ("enhance", "set_fidelity") if hasattr(obj, a) and not callable(getattr(obj, a))]
    bad_size = hasattr(obj, "size") and not (isinstance(obj.size, int) and obj.size >= 32)
    if missing or not_callable or bad_size:
        what = []
        if missing:
            what.append("missing " + ", ".join(missing))
        if not_callable:
            what.append("not callable: " + ", ".join(not_callable))
        if bad_size:
            what.append(f"size must be an int >= 32, got {getattr(obj, 'size', None)!r}")
        raise ModelError(f"{type(obj).__name__} is not a face enhancer ({'; '.join(what)})",
                         "this is a bug in the enhancer module; please report it")
    return obj


def _clamp01(w: float) -> float:
    w = float(w)
    if not np.isfinite(w):
        raise ValueError(f"fidelity must be a number in 0..1, got {w!r}")
    return min(max(w, 0.0), 1.0)


def _to_size(crop: np.ndarray, size: int) -> np.ndarray:
    if crop.shape[0] == size and crop.shape[1] == size:
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def bgr_to_signed_rgb(crop: np.ndarray) -> np.ndarray:
    """uint8 BGR (H, W, 3) → float32 (1, 3, H, W) RGB in [-1, 1] (the official pre-processing)."""
    x = crop[:, :, ::-1].astype(np.float32) * (2.0 / 255.0) - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def signed_rgb_to_bgr(x: np.ndarray) -> np.ndarray:
    """float (1, 3, H, W) or (3, H, W) RGB in [-1, 1] → uint8 BGR (H, W, 3), clipped and rounded."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        x = x[0]
    x = (np.clip(x, -1.0, 1.0) + 1.0) * 127.5
    return np.ascontiguousarray(np.rint(x).astype(np.uint8).transpose(1, 2, 0)[:, :, ::-1])


# --------------------------------------------------------------------------- CodeFormer


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ModelError("CodeFormer needs PyTorch, which is not installed",
                         "pip install 'mirage-desktop[enhancer]' (install torch for your platform first), "
                         "or use the GFPGAN enhancer") from exc
    return torch


class CodeFormerEnhancer:
    """CodeFormer on a 512 px FFHQ-aligned crop.

    ``device="auto"`` picks CUDA when available; ``fp16=None`` means fp16 on CUDA, fp32
    elsewhere. ``fidelity`` (0..1, default 0.75) trades restoration strength (0) for
    faithfulness to the input (1); change it live with :meth:`set_fidelity`.
    """

    name = "codeformer"
    supports_fidelity = True

    def __init__(self, path: str | os.PathLike, device: str = "auto", fp16: bool | None = None,
                 fidelity: float = DEFAULT_FIDELITY):
        from .codeformer_arch import load_codeformer

        dev, half = self._resolve_device(device, fp16)
        net = load_codeformer(path, device=dev, fp16=half)
        self._setup(net, dev, half, fidelity)

    @classmethod
    def from_network(cls, net: Any, device: str = "cpu", fp16: bool = False,
                     fidelity: float = DEFAULT_FIDELITY) -> "CodeFormerEnhancer":
        """Wrap an already-built network (tests, benchmarks with random weights)."""
        self = cls.__new__(cls)
        dev, half = cls._resolve_device(device, fp16)
        net = net.eval().requires_grad_(False).to(dev)
        if half:
            net = net.half()
        self._setup(net, dev, half, fidelity)
        return self

    @staticmethod
    def _resolve_device(device: str, fp16: bool | None) -> tuple[str, bool]:
        torch = _torch()
        if device in (None, "", "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"CodeFormer was asked to run on {device} but PyTorch sees no CUDA device",
                             "install a CUDA build of torch, or set the enhancer device to cpu")
        half = str(device).startswith("cuda") if fp16 is None else bool(fp16)
        if half and not str(device).startswith("cuda"):
            log.info("fp16 CodeFormer is only used on CUDA; running fp32 on %s", device)
            half = False
        return str(device), half

    def _setup(self, net: Any, device: str, half: bool, fidelity: float) -> None:
        torch = _torch()
        self._torch = torch
        self.net = net
        self.device = device
        self.fp16 = half
        self.size = int(getattr(net, "img_size", 512))
        self.provider = f"{device} {'fp16' if half else 'fp32'}"
        self._dtype = torch.float16 if half else torch.float32
        self._fidelity = _clamp01(fidelity)
        self._lock = threading.Lock()  # one forward at a time; torch releases the GIL inside

    @property
    def fidelity(self) -> float:
        return self._fidelity

    def set_fidelity(self, w: float) -> None:
        self._fidelity = _clamp01(w)

    def enhance(self, crop: np.ndarray) -> np.ndarray:
        torch = self._torch
        h, w = crop.shape[:2]
        x = torch.from_numpy(bgr_to_signed_rgb(_to_size(crop, self.size)))
        with self._lock, torch.inference_mode():
            x = x.to(self.device, dtype=self._dtype, non_blocking=True)
            y = self.net(x, w=self._fidelity, adain=True)
            out = y.float().cpu().numpy()
        res = signed_rgb_to_bgr(out)
        return res if (h, w) == (self.size, self.size) else cv2.resize(res, (w, h), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- GFPGAN (ONNX)


class GFPGANEnhancer:
    """GFPGAN v1.4 ONNX export: one image input 1x3x512x512 RGB [-1, 1] → same-shaped output.

    The common export (``torch.onnx.export(..., input_names=['input'])``) names its input
    ``input`` and leaves the output name generated; both are read from the session: the image
    input is the rank-4 input, the result is the first rank-4 output. A model that also takes a
    scalar fidelity input (``weight``/``w``/``fidelity``, as CodeFormer ONNX exports do) gets the
    fidelity fed there, so the same class serves those too.
    """

    name = "gfpgan"

    def __init__(self, path: str | os.PathLike, providers: str | Sequence[str] | None = "auto",
                 fidelity: float = DEFAULT_FIDELITY):
        from ..models.runtime import create_session

        self.session = create_session(path, providers)
        self.provider = self.session.provider
        ins = list(self.session.inputs)
        images = [i for i in ins if len(i.shape or ()) == 4]
        if len(images) != 1:
            raise ModelError(f"{os.fspath(path)} is not a face enhancer export: expected one 1x3xSxS image "
                             f"input, got {[(i.name, i.shape) for i in ins]}",
                             "re-download with `mirage models download --force gfpgan_1_4`")
        self._image = images[0].name
        shape = images[0].shape
        self.size = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else 512
        self._weight = None
        others = [i for i in ins if i.name != self._image]
        for i in others:
            if i.name.lower() in ("weight", "w", "fidelity") and len(i.shape or ()) <= 1:
                self._weight = i
            else:
                raise ModelError(f"{os.fspath(path)} has an input {i.name!r} {i.shape} the enhancer cannot feed",
                                 "use the GFPGAN v1.4 512x512 ONNX export from models.toml")
        from ..models import contract

        outs = list(self.session.outputs)
        image_out = next((k for k, o in enumerate(outs) if len(o.shape or ()) == 4), 0)  # the first image
        dims = contract.check(self.session, contract.enhancer_contract(
            REGISTRY_NAMES["gfpgan"], self._image, self._weight.name if self._weight is not None else None),
            outputs=[image_out])
        self.size = int(dims.get("S", self.size))
        self._output = outs[image_out].name
        self.supports_fidelity = self._weight is not None
        self._fidelity = _clamp01(fidelity)

    def set_fidelity(self, w: float) -> None:
        self._fidelity = _clamp01(w)

    def enhance(self, crop: np.ndarray) -> np.ndarray:
        h = crop.shape[0]
        feeds = {self._image: bgr_to_signed_rgb(_to_size(crop, self.size))}
        if self._weight is not None:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in (self._weight.shape or [])]
            feeds[self._weight.name] = np.full(shape, self._fidelity)
        out = self.session.run(feeds, [self._output])[0]
        res = signed_rgb_to_bgr(out)
        return res if h == self.size else _to_size(res, h)


# --------------------------------------------------------------------------- factory


def _setting(settings: Any, name: str, default: Any) -> Any:
    if settings is None:
        return default
    if isinstance(settings, Mapping):
        return settings.get(name, default)
    return getattr(settings, name, default)


def load_enhancer(kind: str | None = None, settings: Any = None, *, path: str | os.PathLike | None = None) -> Enhancer:
    """Build the enhancer ``kind`` ("codeformer" | "gfpgan"; default ``settings.enhancer``).

    ``settings`` is anything with ``enhancer``, ``codeformer_fidelity``, ``providers`` (and
    optionally ``enhancer_device``) as attributes or keys, e.g. :class:`~mirage_desktop.config.Settings`.
    The model file comes from the registry (``require``) unless ``path`` is given.
    """
    kind = (kind or _setting(settings, "enhancer", "codeformer")).strip().lower()
    if kind not in ENHANCER_KINDS:
        raise ModelError(f"unknown enhancer {kind!r}", f"choose one of: {', '.join(ENHANCER_KINDS)}")
    fidelity = _setting(settings, "codeformer_fidelity", DEFAULT_FIDELITY)
    if path is None:
        from ..models.registry import require

        path = require(REGISTRY_NAMES[kind])
    if kind == "codeformer":
        enh: Any = CodeFormerEnhancer(path, device=_setting(settings, "enhancer_device", "auto"),
                                      fidelity=fidelity)
    else:
        enh = GFPGANEnhancer(path, providers=_setting(settings, "providers", "auto"), fidelity=fidelity)
    return check_enhancer(enh)


# --------------------------------------------------------------------------- real-time stage


@functools.lru_cache(maxsize=8)
def ffhq_face_mask(size: int = 512) -> np.ndarray:
    """Feathered face-oval mask (float32 0..1, read-only) for an FFHQ-aligned ``size`` crop."""
    t = FFHQ_512 * (size / 512.0)
    eyes, mouth = (t[0] + t[1]) / 2, (t[3] + t[4]) / 2
    eye_dist = float(np.linalg.norm(t[1] - t[0]))
    cx = float((eyes[0] + mouth[0]) / 2)
    cy = float((eyes[1] + mouth[1]) / 2)
    axes = (int(round(1.2 * eye_dist)), int(round(1.55 * eye_dist)))
    m = np.zeros((size, size), np.float32)
    cv2.ellipse(m, (int(round(cx)), int(round(cy))), axes, 0, 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
    m = cv2.GaussianBlur(m, (0, 0), max(1.0, size / 32.0))
    m.setflags(write=False)
    return m


def _edge_ramp(h: int, w: int, feather: int) -> np.ndarray:
    """(h, w) float32 weights: 0 on the box's border, rising linearly to 1 over ``feather`` px."""
    f = max(int(feather), 1)
    ry = np.minimum(np.arange(h, dtype=np.float32), np.arange(h - 1, -1, -1, dtype=np.float32))
    rx = np.minimum(np.arange(w, dtype=np.float32), np.arange(w - 1, -1, -1, dtype=np.float32))
    ry = np.clip(ry / f, 0.0, 1.0)
    rx = np.clip(rx / f, 0.0, 1.0)
    return np.minimum(ry[:, None], rx[None, :])


def face_box(face: Face, frame_shape: tuple) -> tuple[int, int, int, int] | None:
    """The face's bbox as ints clipped to the frame, or None if empty."""
    h, w = frame_shape[:2]
    x0, y0, x1, y1 = (float(v) for v in face.bbox[:4])
    x0, y0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    x1, y1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


def _feather(w: int, h: int) -> int:
    """Width of the edge ramp for a ``w`` x ``h`` paste box."""
    return max(2, min(w, h) // 12)


def paste_region(face: Face, frame_shape: tuple) -> tuple[tuple[int, int, int, int], int] | None:
    """Where the enhancer pastes for ``face``, and the width of its edge ramp: the detector's box
    joined with the box the swap changes (:func:`~mirage_desktop.vision.blend.swap_region`; a
    tight detector box leaves out the chin and jaw the swap replaced), grown by the ramp's width
    so the ramp fades out beyond the swapped pixels, not over them; clipped to the frame. None
    when neither box is on the frame."""
    h, w = frame_shape[:2]
    kps = np.asarray(face.kps, dtype=np.float64)
    boxes = [b for b in (face_box(face, frame_shape),
                         swap_region(kps, frame_shape) if kps.shape == (5, 2) and np.isfinite(kps).all() else None)
             if b is not None]
    if not boxes:
        return None
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    f = _feather(x1 - x0, y1 - y0)
    x0, y0, x1, y1 = max(x0 - f, 0), max(y0 - f, 0), min(x1 + f, w), min(y1 + f, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return (x0, y0, x1, y1), f


def paste_in_box(frame: np.ndarray, crop: np.ndarray, m: np.ndarray, mask: np.ndarray,
                 box: tuple[int, int, int, int], feather: int | None = None) -> None:
    """Blend aligned ``crop`` (made with matrix ``m``) into ``frame`` in place, only inside ``box``.

    The weight is the crop-space ``mask`` warped into the box times a ramp that falls to 0 at
    the box's edge, so there is no seam and nothing outside the box is read or written.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    im = invert_affine(m)
    im[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(crop, im, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    wmask = cv2.warpAffine(mask, im, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0.0)
    wmask *= _edge_ramp(h, w, feather if feather is not None else _feather(w, h))
    roi = frame[y0:y1, x0:x1]
    roi[:] = cv2.blendLinear(warped, roi, wmask, 1.0 - wmask)


@dataclass
class _TrackCache:
    enhanced: np.ndarray  # last enhanced crop, in aligned (canonical) space
    frame_index: int  # frame it was made on
    last_seen: int


class EnhanceStage:
    """Per-frame face enhancement, affordable: run the model every ``interval``-th frame per face.

    ``process(frame, faces)`` works in place. Per face (keyed by ``face.track_id``): align a
    crop with the FFHQ template from the face's keypoints, run the enhancer if this track's
    last result is ``interval`` or more frames old (or there is none), else re-use it — it is
    stored in aligned space, so pasting it with this frame's matrix makes it follow the face.
    Faces without a track id (``track_id < 0``) are enhanced every frame (re-use could put one
    face's result on another). ``blend`` (0..1) mixes raw crop and enhanced crop; 0 skips the
    stage. Only the face's region (:func:`paste_region`) is read and written.

    A raising enhancer does not stop the stream: the face is left as it is, the error counted
    (``errors.enhance_model``) and kept in :attr:`last_error`.

    With ``background=True`` the model runs on a thread of its own: the video thread hands it
    the newest aligned crop of each face that is due and pastes the newest finished result
    (re-warped to the face as it is now), so a slow enhancer lowers how fresh the enhancement
    is, never the frame rate. A face has no enhancement until its first result is ready.

    Metrics: ``enhance`` (whole stage per frame), ``enhance.model`` (network call only),
    counters ``enhance.runs``, ``enhance.reused``, ``errors.enhance_model``, ``enhance.superseded``.
    """

    def __init__(self, enhancer: Enhancer, interval: int = 1, blend: float = 1.0,
                 metrics: Metrics | None = None, *, max_age: int = 30, background: bool = False):
        self.enhancer = check_enhancer(enhancer)
        self.size = int(enhancer.size)
        self.metrics = metrics if metrics is not None else Metrics()
        self._lock = threading.RLock()
        self._interval = 1
        self._blend = 1.0
        self.set_interval(interval)
        self.set_blend(blend)
        self._max_age = int(max_age)
        self._cache: dict[int, _TrackCache] = {}
        self._frame = 0
        self.last_error: str | None = None
        self._mask = ffhq_face_mask(self.size)
        self.background = background
        self._worker = TrackWorker("mirage-enhancer", self._lock, self._run_model, self._store,
                                   lambda: self.metrics.incr("enhance.superseded"))

    def retire(self) -> None:
        """Replaced by another stage: stop for good (close() alone lets the next stream restart it)."""
        self._worker.retire()

    def close(self) -> None:
        """Stop the background thread (if any); the stage can be used again afterwards."""
        self._worker.close()

    def _store(self, tid: int, enhanced: np.ndarray | None, index: int) -> None:
        """A background result (called under the lock, only while still current)."""
        if enhanced is not None:
            self._cache[tid] = _TrackCache(enhanced, index, index)

    # -- live settings (any thread) --
    @property
    def interval(self) -> int:
        return self._interval

    @property
    def blend(self) -> float:
        return self._blend

    def set_interval(self, k: int) -> None:
        k = int(k)
        if k < 1:
            raise ValueError("enhancer interval must be >= 1")
        with self._lock:
            self._interval = k

    def set_blend(self, amount: float) -> None:
        """0..1 (a percentage from the UI should be divided by 100 first)."""
        amount = float(amount)
        if not 0.0 <= amount <= 1.0:
            raise ValueError("enhancer blend must be 0..1")
        with self._lock:
            self._blend = amount

    def set_fidelity(self, w: float) -> None:
        self.enhancer.set_fidelity(w)
        with self._lock:  # old results were made with the old fidelity: refresh on the next frame
            self._cache.clear()
            self._worker.invalidate()

    def forget(self, track_id: int) -> None:
        with self._lock:
            self._cache.pop(track_id, None)

    def reset(self) -> None:
        """Forget every result, including those still being made (they describe another face)."""
        with self._lock:
            self._cache.clear()
            self._worker.invalidate()  # (the frame count goes on: a frame in flight keeps a valid index)

    # -- the hot path (video thread) --
    def process(self, frame: np.ndarray, faces: Iterable[Face]) -> None:
        with self._lock:
            interval, blend = self._interval, self._blend
            index = self._frame
            self._frame += 1
        faces = list(faces)
        if blend <= 0.0 or not faces:
            return
        with self.metrics.timer("enhance"):
            due: list = []
            for face in faces:
                self._process_face(frame, face, index, interval, blend, due)
            if due:
                self._worker.submit(due)
            self._evict(index)

    def _run_model(self, raw: np.ndarray) -> np.ndarray | None:
        try:
            with self.metrics.timer("enhance.model"):
                enhanced = self.enhancer.enhance(raw)
        except Exception as exc:  # pass-through: never stop the stream
            self.metrics.incr("errors.enhance_model")
            if self.last_error is None:
                log.warning("face enhancer %s failed, face left unenhanced: %s", self.enhancer.name, exc)
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        if enhanced.shape != (self.size, self.size, 3) or enhanced.dtype != np.uint8:
            self.metrics.incr("errors.enhance_model")
            self.last_error = f"enhancer returned {enhanced.dtype} {enhanced.shape}"
            return None
        self.metrics.incr("enhance.runs")
        return enhanced

    def _process_face(self, frame: np.ndarray, face: Face, index: int, interval: int, blend: float,
                      due: list) -> None:
        kps = np.asarray(face.kps, dtype=np.float64)
        if kps.shape != (5, 2) or not np.isfinite(kps).all():
            return
        region = paste_region(face, frame.shape)
        if region is None:
            return
        box, feather = region
        m = align_matrix(kps, self.size, template="ffhq")
        tid = int(face.track_id)
        with self._lock:
            entry = self._cache.get(tid) if tid >= 0 else None
            stale = entry is None or index - entry.frame_index >= interval
            submit = self.background and tid >= 0 and stale and tid not in self._worker.inflight
            if submit:
                self._worker.inflight.add(tid)
            generation = self._worker.generation  # read with the cache: a reset after this drops the result
        need_raw = stale or blend < 1.0
        raw = warp_crop(frame, m, self.size) if need_raw else None
        if submit:
            due.append((tid, raw, index, generation))
        if self.background and tid >= 0:
            if entry is None:
                return  # the first result for this face is not ready yet
            enhanced = entry.enhanced
            entry.last_seen = index
            self.metrics.incr("enhance.reused")
        elif stale:
            enhanced = self._run_model(raw)
            if enhanced is None:
                return
            if tid >= 0:
                with self._lock:
                    if generation == self._worker.generation:  # not reset while the model ran
                        self._cache[tid] = _TrackCache(enhanced, index, index)
        else:
            enhanced = entry.enhanced
            entry.last_seen = index
            self.metrics.incr("enhance.reused")
        if blend < 1.0 and raw is None:
            raw = warp_crop(frame, m, self.size)
        out = enhanced if blend >= 1.0 else cv2.addWeighted(enhanced, blend, raw, 1.0 - blend, 0.0)
        paste_in_box(frame, out, m, self._mask, box, feather)

    def _evict(self, index: int) -> None:
        with self._lock:
            stale = [t for t, e in self._cache.items() if index - e.last_seen > self._max_age]
            for t in stale:
                del self._cache[t]
