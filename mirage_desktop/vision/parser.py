"""The occlusion-aware mask: a face parser decides which pixels of the target face are replaced.

A BiSeNet face parser (FaceFusion's ``bisenet_resnet_18/34`` exports of yakhyo/face-parsing:
``input`` 1x3x512x512 RGB normalised with the ImageNet mean and std → ``output`` 1x19x512x512
logits over the CelebAMask-HQ classes) labels every pixel of the *aligned* face crop. Only the
regions the user chose (``Settings.parser_regions``; skin, brows, eyes, nose, mouth and lips by
default) are swapped, so whatever is in front of the face — a hand, a cup, a microphone, the
user's own glasses — is not one of them and stays as the camera saw it. The region mask is
combined (minimum) with the feathered oval and the mouth mask the swapper already uses.

Affordable live (:class:`ParseStage`):

- the parser runs on the ArcFace-aligned crop (512 px, the parser's input), never the frame;
- every ``parser_interval``-th frame per tracked face; its labels are kept in the aligned crop's
  own coordinates, so between runs the last mask *follows the face* (the next frame's crop is
  aligned to the face as it is then);
- on a thread of its own by default (``parser_async``), like the enhancer: the video thread
  hands over the newest crop of each face that is due and uses the newest finished labels, so a
  slow parser makes the mask older, never the frame later. A face has the plain oval mask until
  its first labels are ready (a face without a track, as on a still, is parsed inline);
- temporal smoothing (``mask_smoothing``): each new mask is blended with the face's previous
  one, so pixel noise at region borders does not flicker (an occluder that appears is followed
  at that rate: with 0.6 the mask has gone 64 % of the way after two parses, 87 % after four).

Metrics: ``parse`` (the stage on the video thread), ``parse.model`` (the network call),
counters ``parse.runs``, ``parse.reused``, ``errors.parse_model``, ``parse.superseded``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterable

import cv2
import numpy as np

from ..config import PARSER_REGIONS
from ..errors import MirageError
from ..metrics import Metrics
from .align import align_matrix, warp_crop
from .face import Face
from .slot import RunWatch, TrackWorker

log = logging.getLogger(__name__)

PARSE_SIZE = 512  # the crop the parser sees (its input size)
LABEL_SIZE = 256  # labels are kept at this size (every 2nd pixel of the output: the mask is feathered anyway)
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet, RGB (the exports' training normalisation)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
N_CLASSES = 19


def region_classes(regions: str | Iterable[str]) -> tuple[int, ...]:
    """The parser classes of a region list ("skin,nose" or ["skin", "nose"])."""
    names = regions.split(",") if isinstance(regions, str) else list(regions)
    out: list[int] = []
    for n in names:
        n = n.strip()
        if n:
            out.extend(PARSER_REGIONS[n])
    return tuple(sorted(set(out)))


class FaceParser:
    """One parser session. ``labels(crop)``: uint8 (LABEL_SIZE, LABEL_SIZE) class per pixel of an
    aligned BGR crop (any size; resized to the parser's input)."""

    name = "parser"

    def __init__(self, handle):
        from ..models import contract

        contract.check(handle, contract.PARSER)
        self.handle = handle
        self.input_name = handle.inputs[0].name
        self.output_name = handle.outputs[0].name
        self.provider = getattr(handle, "provider", "")
        self.size = PARSE_SIZE

    def labels(self, crop_bgr: np.ndarray) -> np.ndarray:
        blob = cv2.dnn.blobFromImage(crop_bgr, 1.0 / 255.0, (self.size, self.size),
                                     tuple(float(v) * 255.0 for v in _MEAN), swapRB=True)
        blob /= _STD.reshape(1, 3, 1, 1)
        logits = self.handle.run({self.input_name: blob}, [self.output_name])[0]
        if logits.shape[:2] != (1, N_CLASSES) or logits.ndim != 4:
            raise MirageError(f"the face parser returned {logits.shape}, expected 1x{N_CLASSES}xHxW",
                              "use bisenet_resnet_18 or bisenet_resnet_34 from models.toml")
        step = max(1, logits.shape[2] // LABEL_SIZE)
        lab = np.argmax(logits[0, :, ::step, ::step], axis=0).astype(np.uint8)
        if lab.shape != (LABEL_SIZE, LABEL_SIZE):
            lab = cv2.resize(lab, (LABEL_SIZE, LABEL_SIZE), interpolation=cv2.INTER_NEAREST)
        return lab


def labels_to_mask(labels: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """float32 0..1 mask of the chosen classes, feathered *inwards*: a pixel next to an occluder
    is already partly the camera's, so no swapped colour bleeds onto what covers the face."""
    lut = np.zeros(256, np.uint8)
    lut[list(classes)] = 255
    m = cv2.LUT(labels, lut).astype(np.float32) * (1.0 / 255.0)
    sigma = labels.shape[0] / 96.0
    m = cv2.GaussianBlur(m, (0, 0), sigma)
    # (blurred - 0.5) * 2: 1 well inside a region, 0 at and beyond its border
    cv2.subtract(m, 0.5, dst=m)
    cv2.multiply(m, 2.0, dst=m)
    np.clip(m, 0.0, 1.0, out=m)
    return m


_COMBINED: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def combine(base: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """The blend mask: the feathered oval (and mouth cut) ``base`` narrowed to the parsed regions.

    A face's region mask stays the same between parses (every ``parser_interval`` frames), so
    the result for two read-only masks is kept, read-only itself (paste-back then measures its
    extent once too): at a 512 px pixel boost that saves about 2.7 ms per face and frame."""
    if region is None:
        return base
    cache = not base.flags.writeable and not region.flags.writeable
    key = (id(base), id(region))
    hit = _COMBINED.get(key) if cache else None
    if hit is not None and hit[0] is base and hit[1] is region:
        return hit[2]
    small = region
    if small.shape != base.shape:
        small = cv2.resize(small, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = np.minimum(base, small)
    if cache:
        out.setflags(write=False)
        if len(_COMBINED) >= 16:
            _COMBINED.clear()  # faces and sizes come and go: never grows without bound
        _COMBINED[key] = (base, region, out)
    return out


@dataclass
class _Track:
    labels: np.ndarray | None  # newest labels, aligned-crop space
    labels_at: int  # frame index those labels were made on
    version: int = 1  # counts new labels
    mask: np.ndarray | None = None  # the smoothed region mask (LABEL_SIZE), aligned-crop space
    mask_of: tuple = ()  # (labels version, classes) the mask is up to date with
    last_seen: int = 0

    def new_labels(self, labels: np.ndarray, index: int) -> None:
        self.labels, self.labels_at = labels, index
        self.version += 1


class ParseStage:
    """The parser as a frame stage (name ``parse``, before ``swap``): puts each chosen face's
    region mask on ``face.extra["parse_mask"]`` (aligned-crop space, LABEL_SIZE px), which the
    swap stage combines with its own mask. Live settings: ``parser_regions``, ``parser_interval``,
    ``mask_smoothing`` (read from the frame's options). A failing parser leaves the plain mask
    and is reported (``errors.parse_model``, :attr:`last_error`), the stream goes on."""

    name = "parse"
    needs_faces = True

    def __init__(self, parser: Any, metrics: Metrics | None = None, *, background: bool = True, max_age: int = 30):
        self.parser = parser
        self.metrics = metrics if metrics is not None else Metrics()
        self.background = background
        self._lock = threading.RLock()
        self._tracks: dict[int, _Track] = {}
        self._frame = 0
        self._max_age = max_age
        self.last_error: str | None = None
        self._errors = self._runs = 0  # this stage's own model failures and runs (the metrics are shared)
        self._watch = RunWatch(0, 0)
        self._worker = TrackWorker("mirage-parser", self._lock, self._run, self._store,
                                   lambda: self.metrics.incr("parse.superseded"))
        self.finished = self._worker.finished  # set each time the background thread has finished a request

    # -- the frame-stage contract --
    def wants(self, opts) -> bool:
        return bool(getattr(opts, "enable_parser", False)) and bool(opts.enable_swap) and self.parser is not None

    def process(self, ctx) -> None:
        o = ctx.opts
        classes = region_classes(o.parser_regions)
        interval = max(1, int(o.parser_interval))
        smoothing = min(max(float(o.mask_smoothing), 0.0), 0.95)
        with self._lock:
            index = self._frame
            self._frame += 1
        due: list = []
        for face in ctx.faces:
            self._face(ctx.frame, face, index, interval, classes, smoothing, due)
        if due:
            self._worker.submit(due)
        self._evict(index)
        # the model may run on its own thread: judge by what happened since the last frame
        failing = self._watch.update(self._errors, self._runs, self.last_error)
        if failing:
            raise MirageError(f"the face parser fails ({failing})", "faces are swapped with the plain mask")

    def reset(self) -> None:
        """Forget every face's labels, including those still being made (they describe another moment)."""
        with self._lock:
            self._tracks.clear()
            self._worker.invalidate()  # (the frame count goes on: a frame in flight keeps a valid index)
        self._watch.reset()

    def retire(self) -> None:
        """Replaced by another stage: stop for good (close() alone lets the next stream restart it)."""
        self._worker.retire()

    def close(self) -> None:
        self._worker.close()

    # -- per face (video thread) --
    def _face(self, frame: np.ndarray, face: Face, index: int, interval: int, classes: tuple, smoothing: float,
              due: list) -> None:
        kps = np.asarray(face.kps, np.float64)
        if kps.shape != (5, 2) or not np.isfinite(kps).all():
            return
        tid = int(face.track_id)
        with self._lock:
            tr = self._tracks.get(tid) if tid >= 0 else None
            stale = tr is None or tr.labels is None or index - tr.labels_at >= interval
            submit = self.background and tid >= 0 and stale and tid not in self._worker.inflight
            if submit:
                self._worker.inflight.add(tid)
            generation = self._worker.generation
        if stale and (submit or not self.background or tid < 0):
            crop = warp_crop(frame, align_matrix(kps, PARSE_SIZE), PARSE_SIZE)
            if submit:
                due.append((tid, crop, index, generation))
            else:  # inline: this frame's own labels
                labels = self._run(crop)
                if labels is not None:
                    if tid < 0:  # no track: nothing to carry or smooth
                        face.extra["parse_mask"] = labels_to_mask(labels, classes)
                        self._ran()
                        return
                    with self._lock:
                        tr = self._tracks.get(tid)
                        if tr is None:
                            tr = self._tracks[tid] = _Track(labels, index)
                        else:
                            tr.new_labels(labels, index)
                        self._ran()
        elif not stale:
            self.metrics.incr("parse.reused")
        if tr is None:
            with self._lock:
                tr = self._tracks.get(tid)
        if tr is None:
            return  # the first labels for this face are not ready: the plain mask
        tr.last_seen = index
        with self._lock:
            labels, version = tr.labels, tr.version
        if labels is None:
            return
        key = (version, classes)
        if tr.mask_of != key:  # new labels (or regions): a new mask, blended into the last one
            fresh = labels_to_mask(labels, classes)
            if tr.mask is not None and smoothing > 0.0 and tr.mask_of[1:] == (classes,):
                fresh = cv2.addWeighted(tr.mask, smoothing, fresh, 1.0 - smoothing, 0.0)
            fresh.setflags(write=False)  # replaced, never changed: the swap's combined mask is kept for it
            tr.mask, tr.mask_of = fresh, key
        face.extra["parse_mask"] = tr.mask

    def _run(self, crop: np.ndarray) -> np.ndarray | None:
        try:
            with self.metrics.timer("parse.model"):
                labels = self.parser.labels(crop)
        except Exception as exc:  # pass-through: the plain mask, never a stopped stream
            self.metrics.incr("errors.parse_model")
            with self._lock:
                self._errors += 1
            if self.last_error is None:
                log.warning("face parser failed, faces keep the plain mask: %s", exc)
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        return labels

    def _ran(self) -> None:
        """A model run's labels are stored (counted only then: a waiter on ``parse.runs`` finds them)."""
        with self._lock:
            self._runs += 1
        self.metrics.incr("parse.runs")

    # -- the background thread --
    def _store(self, tid: int, labels: np.ndarray | None, index: int) -> None:
        """A background run's labels (called under the lock, only while still current)."""
        if labels is None:
            return
        tr = self._tracks.get(tid)
        if tr is None:
            self._tracks[tid] = _Track(labels, index, last_seen=index)
        else:
            tr.new_labels(labels, index)
        self._ran()

    def _evict(self, index: int) -> None:
        with self._lock:
            for t in [t for t, tr in self._tracks.items() if index - tr.last_seen > self._max_age]:
                del self._tracks[t]


def parse_mask_fn(face: Face, crop: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The swapper's ``mask_fn``: the oval narrowed by the face's parsed regions, if it has any."""
    return combine(base, face.extra.get("parse_mask"))
