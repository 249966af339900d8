"""Face detectors: SCRFD (insightface buffalo_l det_10g, 5 keypoints) and a built-in fallback.

SCRFD decoding follows the published model: three strides (8, 16, 32), two anchors per cell,
scores already passed through a sigmoid, box and keypoint offsets in units of the stride.
Outputs are matched to strides by their shapes, so any export order works.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

from ..errors import ModelError
from ..models.runtime import SessionHandle
from .face import Face

log = logging.getLogger(__name__)


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= thresh]
    return keep


class SCRFD:
    """SCRFD with keypoints on an onnxruntime session."""

    name = "scrfd"
    STRIDES = (8, 16, 32)

    def __init__(self, handle: SessionHandle, det_size: int = 640, threshold: float = 0.5,
                 nms_threshold: float = 0.4):
        self.handle = handle
        self.det_size = int(det_size)
        self.threshold = threshold
        self.nms_threshold = nms_threshold
        from ..models import contract

        contract.check(handle, contract.SCRFD)
        shape = handle.declared_shapes.get(handle.inputs[0].name) or handle.inputs[0].shape
        if isinstance(shape[2], int) and isinstance(shape[3], int):  # a static export: its size only
            if shape[2] != shape[3]:
                raise contract.SCRFD.refuse(handle.path, f"input is {shape[2]}x{shape[3]}; expected a square input")
            self.fixed_size = int(shape[2])
            self.det_size = self.fixed_size
        else:
            self.fixed_size = None
        self.input_name = handle.inputs[0].name
        outs = handle.outputs
        self.output_names = [o.name for o in outs]
        self.use_kps = len(outs) == 9
        self.num_anchors = 2
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()
        # a file with a free input size runs on a session with the size fixed, one per size used
        # (made when the size is first run: a new det_size costs one session on the detector's thread)
        self._sessions: dict[int, SessionHandle] = {}
        self._session_lock = threading.Lock()
        run_shape = handle.inputs[0].shape
        if self.fixed_size is None and isinstance(run_shape[2], int) and run_shape[2] == run_shape[3]:
            self._sessions[int(run_shape[2])] = handle

    def set_det_size(self, size: int) -> None:
        if self.fixed_size is not None and int(size) != self.fixed_size:
            log.warning("%s only runs at %d px; det_size %d is not used", self.handle.path.name, self.fixed_size,
                        int(size))
        with self._lock:
            self.det_size = int(size) if self.fixed_size is None else self.fixed_size

    def _session_for(self, size: int) -> SessionHandle:
        if self.fixed_size is not None or not self.handle.declared_shapes:
            return self.handle  # a static export, or a session whose shape stays free
        h = self._sessions.get(size)
        if h is not None:
            return h
        with self._session_lock:  # one build per size, also when sessions of `mirage serve` share it
            h = self._sessions.get(size)
            if h is None:
                try:
                    h = self.handle.reshaped({self.input_name: [1, 3, size, size]})
                except Exception as exc:  # the free-size session still works: slower, not wrong
                    log.warning("a %d px session for %s could not be made (%s); using the free-size one", size,
                                self.handle.path.name, exc)
                    h = self.handle
                self._sessions[size] = h
        return h

    def _anchor_centers(self, h: int, w: int, stride: int) -> np.ndarray:
        key = (h, w, stride)
        c = self._centers.get(key)
        if c is None:
            ys, xs = np.mgrid[:h, :w]
            c = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            c = np.repeat(c, self.num_anchors, axis=0)
            self._centers[key] = c
        return c

    @property
    def crops(self) -> bool:
        """Can it run at another input size (a small one, on a face's region)? Not a fixed-size
        export, and not on TensorRT (an engine is built for every new input size, for minutes)."""
        return self.fixed_size is None and getattr(self.handle, "provider", "") != "TensorrtExecutionProvider"

    def prepare(self, img: np.ndarray, size: int | None = None) -> tuple:
        """Letterbox and normalise ``img`` for the network (cheap; done on the caller's thread).
        ``size``: this input size instead of ``det_size`` (a free-size model only: a region)."""
        with self._lock:
            size = self.det_size if size is None or self.fixed_size is not None else int(size)
            h, w = img.shape[:2]
            scale = size / max(h, w)
            nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
            canvas = np.zeros((size, size, 3), np.uint8)
            canvas[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        return None, scale, size, canvas

    def detect_prepared(self, prep: tuple, max_num: int = 0) -> list[Face]:
        """Run on a prepared input; the normalisation happens here, on the detector's thread."""
        _, scale, size, canvas = prep
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128.0, (size, size), (127.5, 127.5, 127.5), swapRB=True)
        outs = self._session_for(size).run({self.input_name: blob}, self.output_names)
        return self._decode(outs, size, scale, max_num)

    def detect(self, img: np.ndarray, max_num: int = 0) -> list[Face]:
        return self.detect_prepared(self.prepare(img), max_num)

    def _decode(self, outs: list[np.ndarray], size: int, det_scale: float, max_num: int) -> list[Face]:
        by_stride: dict[int, dict[int, np.ndarray]] = {}
        for o in outs:
            a = o.reshape(-1, o.shape[-1]) if o.ndim == 3 else o
            n, c = a.shape
            stride = None
            for s in self.STRIDES:
                if n == (size // s) * (size // s) * self.num_anchors:
                    stride = s
            if stride is None:
                raise ModelError(f"detector output of shape {o.shape} does not fit SCRFD at {size}px",
                                 "use det_10g.onnx from buffalo_l, or set det_size to a multiple of 32")
            by_stride.setdefault(stride, {})[c] = a
        all_scores, all_boxes, all_kps = [], [], []
        for s in self.STRIDES:
            d = by_stride.get(s, {})
            if 1 not in d or 4 not in d:
                continue
            scores = d[1][:, 0]
            idx = np.where(scores >= self.threshold)[0]
            if idx.size == 0:
                continue
            centers = self._anchor_centers(size // s, size // s, s)[idx]
            dist = d[4][idx] * s
            boxes = np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1)
            all_scores.append(scores[idx])
            all_boxes.append(boxes)
            if self.use_kps and 10 in d:
                k = d[10][idx].reshape(-1, 5, 2) * s + centers[:, None, :]
                all_kps.append(k)
        if not all_scores:
            return []
        scores = np.concatenate(all_scores)
        boxes = np.concatenate(all_boxes) / det_scale
        kps = np.concatenate(all_kps) / det_scale if all_kps else None
        keep = nms(boxes, scores, self.nms_threshold)
        faces = []
        for i in keep:
            k = kps[i] if kps is not None else _kps_from_box(boxes[i])
            faces.append(Face(bbox=boxes[i].astype(np.float64), kps=k.astype(np.float64), score=float(scores[i])))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces[:max_num] if max_num > 0 else faces


# typical 5-point layout inside a frontal face box, in box-relative units
KPS_LAYOUT = ((0.32, 0.40), (0.68, 0.40), (0.50, 0.58), (0.36, 0.76), (0.64, 0.76))


def _kps_from_box(box: np.ndarray) -> np.ndarray:
    """Typical 5-point layout inside a frontal face box (used when a detector gives no keypoints)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    rel = np.array(KPS_LAYOUT)
    return np.stack([x1 + rel[:, 0] * w, y1 + rel[:, 1] * h], axis=1)


class HaarFaceDetector:
    """OpenCV's bundled Haar cascade: no download, works offline, frontal faces only.

    Used when det_10g.onnx is missing so the source picker can still check photos. Scores are a
    heuristic from the number of overlapping raw detections; eye positions come from the eye
    cascade when it finds both eyes, otherwise from typical proportions.
    """

    name = "opencv-haar"

    def __init__(self):
        base = cv2.data.haarcascades
        self._face = cv2.CascadeClassifier(base + "haarcascade_frontalface_default.xml")
        self._eyes = cv2.CascadeClassifier(base + "haarcascade_eye.xml")
        if self._face.empty():
            raise ModelError("OpenCV's face cascade is missing", "reinstall opencv-python-headless")
        self._lock = threading.Lock()

    def prepare(self, img: np.ndarray) -> np.ndarray:
        return img.copy()

    def detect_prepared(self, prep: np.ndarray, max_num: int = 0) -> list[Face]:
        return self.detect(prep, max_num)

    def set_det_size(self, size: int) -> None:
        pass

    def detect(self, img: np.ndarray, max_num: int = 0) -> list[Face]:
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        scale = 1.0
        if max(gray.shape) > 1024:
            scale = 1024 / max(gray.shape)
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_side = max(24, int(min(gray.shape) * 0.06))
        with self._lock:
            rects, neighbours = self._face.detectMultiScale2(gray, scaleFactor=1.1, minNeighbors=5,
                                                             minSize=(min_side, min_side))
        faces = []
        for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).reshape(-1)):
            box = np.array([x, y, x + w, y + h], np.float64)
            kps = _kps_from_box(box)
            with self._lock:
                eyes = self._eyes.detectMultiScale(gray[y:y + h // 2, x:x + w], 1.1, 4,
                                                   minSize=(max(8, w // 8), max(8, w // 8)))
            if len(eyes) >= 2:
                eyes = sorted(eyes, key=lambda e: e[2] * e[3], reverse=True)[:2]
                centers = sorted([(x + ex + ew / 2, y + ey + eh / 2) for ex, ey, ew, eh in eyes])
                if abs(centers[1][0] - centers[0][0]) > 0.2 * w:
                    kps[0], kps[1] = centers[0], centers[1]
            score = float(1.0 - np.exp(-float(n) / 12.0))
            faces.append(Face(bbox=box / scale, kps=kps / scale, score=score))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces[:max_num] if max_num > 0 else faces
