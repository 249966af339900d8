"""When to run the detector, and how faces are carried between detections.

DetectionScheduler: the detector runs every ``interval`` frames (default 5); on the next frame
when the last detection's lowest confidence was below ``redetect_below`` (0.70) or no face is
tracked; a track is stable after ``stable_count`` (3) consecutive detections at
``stable_confidence`` (0.85) or more. Stability sets the pace: once every tracked face is stable
the interval is stretched (``stable_stretch``, 2: every 10th frame at interval 5); a face still
being acquired keeps the plain interval.

FaceTracker: between detections each face is moved by sparse optical flow (Lucas-Kanade) on a
grid of points inside its box, using only the region around the face (at half size for a face
of 120 px or more). Detections may arrive a
few frames late (the detector runs on its own thread); they are moved forward by the motion
the track has seen since the frame they were made on. A track the detector misses is held
(still moved by flow, still swapped) until it has gone unmatched for ``hold_frames`` frames since
its last matched detection (``track_hold_frames``, 6), so a face whose confidence wobbles does
not flash off and on; then it is dropped.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from .align import invert_affine as _inverse
from .align import transform_points as _apply
from .face import Face


class DetectionScheduler:
    """Decides, frame by frame, whether the detector runs (or is asked to run) on this frame.

    The interval follows how sure the tracker is: the brief's ``interval`` while a face is being
    acquired (not yet stable), ``stable_stretch`` times longer once every tracked face is stable, so
    the detector's load goes where it is needed. A detection below ``redetect_below``, or no face
    at all, still re-detects on the next frame, and ends the stretch at once."""

    def __init__(self, interval: int = 5, redetect_below: float = 0.70, stable_stretch: int = 2):
        self.interval = max(1, int(interval))
        self.redetect_below = redetect_below
        self.stable_stretch = max(1, int(stable_stretch))
        self.countdown = 0  # frames until the next scheduled detection
        self.low_confidence = False
        self.have_faces = False
        self.stable = False  # every tracked face is stable

    @property
    def current_interval(self) -> int:
        """The interval in force now (frames between scheduled detections)."""
        return self.interval * self.stable_stretch if self.stable else self.interval

    def should_detect(self) -> bool:
        return self.countdown <= 0 or self.low_confidence or not self.have_faces

    def on_frame(self, detected: bool) -> None:
        """Call once per frame, saying whether the detector ran (or was started) on it."""
        if detected:
            self.countdown = self.current_interval - 1
            self.low_confidence = False
        else:
            self.countdown -= 1

    def on_detections(self, scores: list[float], stable: bool = False) -> None:
        """The result of a detection; ``stable``: every tracked face is stable after it."""
        self.have_faces = bool(scores)
        self.low_confidence = bool(scores) and min(scores) < self.redetect_below
        before = self.current_interval
        self.stable = bool(scores) and stable and not self.low_confidence
        # the new pace counts from the frame the detection was started on
        self.countdown += self.current_interval - before


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a ∘ b for 2x3 affine matrices (apply b, then a)."""
    out = np.empty((2, 3))
    out[:, :2] = a[:, :2] @ b[:, :2]
    out[:, 2] = a[:, :2] @ b[:, 2] + a[:, 2]
    return out


def _gray(frame: np.ndarray, box: tuple, scale: int = 1) -> np.ndarray:
    """Grayscale of one region only (the full frame is never converted); at half size with
    ``scale=2``."""
    x0, y0, x1, y1 = box
    roi = frame[y0:y1, x0:x1]
    g = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY) if roi.ndim == 3 and roi.size else roi.copy()
    return cv2.pyrDown(g) if scale == 2 and min(g.shape[:2]) >= 2 else g


# a face at least this large (px, its box's shorter side) is tracked at half size: still 60 px or
# more there, and the flow costs half (measured 0.47 -> 0.22 ms for a 176x226 px face)
HALF_SIZE_FROM = 120


def _flow_scale(bbox: np.ndarray) -> int:
    return 2 if min(bbox[2] - bbox[0], bbox[3] - bbox[1]) >= HALF_SIZE_FROM else 1


# a 5x5 grid over the inner 70 % of a face box, in box-relative units
_GRID = np.stack(np.meshgrid(np.linspace(0.15, 0.85, 5), np.linspace(0.15, 0.85, 5)), -1).reshape(-1, 2)


def _region(bbox: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = bbox
    bw, bh = x2 - x1, y2 - y1
    return (int(max(0, x1 - 0.4 * bw)), int(max(0, y1 - 0.4 * bh)),
            int(min(w, x2 + 0.4 * bw)), int(min(h, y2 + 0.4 * bh)))


def _inside(bbox: np.ndarray, region: tuple, margin: float = 0.2) -> bool:
    """Is the face still comfortably inside the region flow runs on (so it can be kept)?"""
    x1, y1, x2, y2 = bbox
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    return x1 - mx >= region[0] and y1 - my >= region[1] and x2 + mx <= region[2] and y2 + my <= region[3]


def _move_box(m: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Move a box by a similarity: its centre moves, its size scales (its shape stays)."""
    c = _apply(m, ((box[:2] + box[2:]) / 2)[None])[0]
    half = (box[2:] - box[:2]) * np.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])) / 2
    return np.concatenate([c - half, c + half])


IDENTITY = np.array([[1.0, 0, 0], [0, 1.0, 0]])


@dataclass
class Track:
    id: int
    face: Face
    high_streak: int = 0
    misses: int = 0
    last_seen: int = 0  # the frame index of the last detection matched to it
    embedding: np.ndarray | None = None
    # cumulative motion since the track began, per frame index (to move late detections forward)
    motion: deque = field(default_factory=lambda: deque(maxlen=256))
    acc: np.ndarray = field(default_factory=lambda: IDENTITY.copy())
    prev_gray: np.ndarray | None = None
    prev_box: tuple | None = None
    prev_scale: int = 1  # prev_gray is the region at 1/prev_scale


class FaceTracker:
    def __init__(self, stable_confidence: float = 0.85, stable_count: int = 3, max_misses: int = 1,
                 smoother=None, hold_frames: int = 0):
        self.stable_confidence = stable_confidence
        self.stable_count = stable_count
        self.max_misses = max_misses
        # a missed track is dropped only once it is ``hold_frames`` frames past its last match
        self.hold_frames = max(0, int(hold_frames))
        self.smoother = smoother  # callable(track_id, kps, t) -> kps, or None
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)
        self._lk = dict(winSize=(15, 15), maxLevel=2,
                        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))

    @property
    def stable_tracks(self) -> int:
        return sum(t.high_streak >= self.stable_count for t in self.tracks)

    @property
    def all_stable(self) -> bool:
        return bool(self.tracks) and self.stable_tracks == len(self.tracks)

    # ---- detections --------------------------------------------------------------------
    def update(self, faces: list[Face], frame_index: int) -> None:
        """Merge detections made on ``frame_index`` into the tracks (which may be at a later frame)."""
        unmatched = list(range(len(self.tracks)))
        new_tracks = []
        unplaceable = False  # some track cannot take a detection this old
        for f in sorted(faces, key=lambda f: -f.score):
            best, best_iou, best_moved = None, 0.3, None
            for ti in unmatched:
                t = self.tracks[ti]
                moved = self._forward(t, f, frame_index)
                if moved is None:
                    unplaceable = True
                    continue
                v = iou(moved.bbox, t.face.bbox)
                if v > best_iou:
                    best, best_iou, best_moved = ti, v, moved
            if best is None:
                if unplaceable:
                    continue  # too old to tell whether it is a tracked face: do not make a ghost
                tr = Track(next(self._ids), f, last_seen=frame_index)
                tr.motion.append((frame_index, IDENTITY.copy()))
                tr.high_streak = 1 if f.score >= self.stable_confidence else 0
                f.track_id = tr.id
                f.stable = tr.high_streak >= self.stable_count
                new_tracks.append(tr)
                continue
            unmatched.remove(best)
            t = self.tracks[best]
            moved = best_moved
            t.high_streak = t.high_streak + 1 if f.score >= self.stable_confidence else 0
            t.misses = 0
            t.last_seen = max(t.last_seen, frame_index)
            moved.track_id = t.id
            moved.stable = t.high_streak >= self.stable_count
            moved.embedding = f.embedding if f.embedding is not None else t.face.embedding
            t.face = moved
        if unplaceable:
            unmatched = []  # a stale result says nothing about which faces are gone
        for ti in unmatched:
            self.tracks[ti].misses += 1
        self.tracks = [t for t in self.tracks if not self._gone(t, frame_index)] + new_tracks
        if self.smoother is not None:
            alive = {t.id for t in self.tracks}
            forget = getattr(self.smoother, "retain", None)
            if forget:
                forget(alive)

    def _gone(self, t: Track, frame_index: int) -> bool:
        """Missed more than ``max_misses`` detections and ``hold_frames`` frames past its last match."""
        return t.misses > self.max_misses and frame_index - t.last_seen >= self.hold_frames

    def _forward(self, t: Track, f: Face, frame_index: int) -> Face | None:
        """Move a detection made on ``frame_index`` by the motion the track saw since then.

        None when the detection is older than the track's motion history (it cannot be placed)."""
        then = None
        for idx, acc in t.motion:
            if idx == frame_index:
                then = acc
                break
        if then is None:
            if t.motion and frame_index < t.motion[0][0]:
                return None
            return Face(f.bbox.copy(), f.kps.copy(), f.score, f.embedding)
        m = _compose(t.acc, _inverse(then))
        return Face(_move_box(m, f.bbox), _apply(m, f.kps), f.score, f.embedding)

    # ---- between detections --------------------------------------------------------------
    def track(self, frame: np.ndarray, frame_index: int) -> None:
        """Move every track to this frame by optical flow on the region around its face."""
        h, w = frame.shape[:2]
        for t in self.tracks:
            m = None
            cur = None
            if t.prev_gray is not None and t.prev_box is not None:
                rx0, ry0, rx1, ry1 = t.prev_box  # the same region in both frames
                sc = t.prev_scale
                cur = _gray(frame, t.prev_box, sc)
                x1, y1, x2, y2 = t.face.bbox
                grid = _GRID * [x2 - x1, y2 - y1] + [x1, y1]
                pts = np.concatenate([grid, t.face.kps]) - [rx0, ry0]
                pts = np.clip(pts, 0, [max(rx1 - rx0 - 1, 0), max(ry1 - ry0 - 1, 0)])
                if cur.shape == t.prev_gray.shape and min(cur.shape[:2]) >= 16:
                    p0 = (pts / sc).astype(np.float32).reshape(-1, 1, 2)
                    p1, st, _ = cv2.calcOpticalFlowPyrLK(t.prev_gray, cur, p0, None, **self._lk)
                    good = st.reshape(-1) == 1 if p1 is not None else np.zeros(0, bool)
                    if good.sum() >= 6:  # the motion in the region's full-size pixels
                        mr, _ = cv2.estimateAffinePartial2D(p0[good] * sc, p1[good] * sc, method=cv2.RANSAC,
                                                            ransacReprojThreshold=2.0)
                        if mr is not None:
                            # ROI-local → frame coordinates: T(+r) · m · T(-r)
                            r = np.array([rx0, ry0], np.float64)
                            m = mr.astype(np.float64)
                            m[:, 2] = m[:, 2] + r - m[:, :2] @ r
            if m is not None:
                t.acc = _compose(m, t.acc)
                t.face = Face(_move_box(m, t.face.bbox), _apply(m, t.face.kps), t.face.score,
                              t.face.embedding, t.id, t.face.stable)
            t.motion.append((frame_index, t.acc.copy()))
            if cur is not None and _inside(t.face.bbox, t.prev_box):
                t.prev_gray = cur  # the face is still well inside: keep the region, re-use its grey
            else:
                t.prev_box = _region(t.face.bbox, w, h)
                t.prev_scale = _flow_scale(t.face.bbox)
                t.prev_gray = _gray(frame, t.prev_box, t.prev_scale)

    def note_frame(self, frame: np.ndarray, frame_index: int) -> None:
        """On a frame where the tracks were set from a detection: remember the region for flow."""
        h, w = frame.shape[:2]
        for t in self.tracks:
            if not t.motion or t.motion[-1][0] != frame_index:
                t.motion.append((frame_index, t.acc.copy()))
            box = _region(t.face.bbox, w, h)
            t.prev_box = box
            t.prev_scale = _flow_scale(t.face.bbox)
            t.prev_gray = _gray(frame, box, t.prev_scale)

    def faces(self, t_now: float | None = None) -> list[Face]:
        out = []
        for t in self.tracks:
            f = t.face
            if self.smoother is not None and t_now is not None:
                f = Face(f.bbox, self.smoother(t.id, f.kps, t_now), f.score, f.embedding, t.id, f.stable)
            else:
                f.track_id = t.id
            out.append(f)
        return out


def select_faces(faces: list[Face], max_faces: int, reference: np.ndarray | None = None,
                 threshold: float = 0.35) -> list[Face]:
    """Largest first, up to ``max_faces``; with a reference embedding only faces that match it."""
    if max_faces <= 0:
        return []
    cands = faces
    if reference is not None:
        cands = [f for f in faces if f.embedding is not None and float(f.embedding @ reference) >= threshold]
    return sorted(cands, key=lambda f: f.area, reverse=True)[:max_faces]
