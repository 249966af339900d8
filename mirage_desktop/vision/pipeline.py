"""The live video pipeline: capture → worker → output, with the detector on its own thread.

::

    CaptureThread ─► LatestSlot ─► VideoWorker ─► LatestSlot ─► OutputThread ─► sinks
                                     │    ▲
                          (every N)  ▼    │ (results, a few frames later)
                                 DetectorThread

Hand-offs hold one frame and drop the oldest (counted), so a slow stage never builds up
latency. Inference releases the GIL, so the detector, the swapper and the output overlap.
Every stage falls back to pass-through: a failing model sends the frame out unswapped,
counted and logged once per cause.

``lossless=True`` (rendering a file to a file) makes the hand-offs wait instead of dropping,
so every input frame is processed and written; live use never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..config import Settings
from ..control.avsync import AVSync
from ..control.ladder import DegradeLadder, FrameRateCap, build_steps
from ..errors import MirageError
from ..metrics import Metrics
from .face import Face
from .mapping import LABEL, choose_mapped, face_latents
from .slot import LatestSlot
from .stages import AiMark, EnhanceFrames, FrameContext, ParseFrames, SwapStage, check_stage, run_stages
from .tracking import DetectionScheduler, FaceTracker, select_faces

log = logging.getLogger(__name__)

# model-inference stages that run on the worker thread (the detector has its own thread)
WORKER_MODEL_STAGES = ("swap.model", "enhance.model")


@dataclass
class FramePacket:
    index: int
    t_capture: float
    frame: np.ndarray
    original: np.ndarray | None = None
    faces: list[Face] = field(default_factory=list)
    swapped: int = 0
    mapped: list = field(default_factory=list)  # (box in 0..1 of the frame, label) of each mapped face


@dataclass(frozen=True)
class FaceView:
    """A face of the newest frame, as the preview shows it: its box as fractions of the frame's
    width and height (x1, y1, x2, y2), its track, and the label of its face-map entry (or "")."""

    box: tuple
    track_id: int
    label: str = ""

    def contains(self, u: float, v: float) -> bool:
        x1, y1, x2, y2 = self.box
        return x1 <= u <= x2 and y1 <= v <= y2


class _OnceLogger:
    def __init__(self):
        self.seen: set[str] = set()

    def __call__(self, key: str, msg: str, *args) -> None:
        if key not in self.seen:
            self.seen.add(key)
            log.warning(msg, *args)


class _OpenCVThreads:
    """OpenCV's own threads off while any stream runs, back to what they were after the last.

    Every per-frame OpenCV call of the worker works on a face's box (tens of thousands of
    pixels), where OpenCV's threads cost more than they save: the pipeline's threads and
    onnxruntime already keep the cores busy, so a call split in two waits for its half on a busy
    core. Measured on 2 cores, tiny models (A/B interleaved): 12.4 -> 10.5 ms of process CPU per
    frame, 4.8 -> 4.2 ms P50 outside inference. The setting is process-wide (OpenCV has no
    per-call one), so it is counted: several streams (``mirage serve``'s sessions) hold it
    together, and the window's work after a stream gets OpenCV's threads back."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved: int | None = None

    def hold(self) -> None:
        import cv2

        with self._lock:
            if self._users == 0:
                self._saved = cv2.getNumThreads()
                cv2.setNumThreads(1)
            self._users += 1

    def release(self) -> None:
        import cv2

        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0 and self._saved is not None:
                cv2.setNumThreads(self._saved)
                self._saved = None


_OPENCV_THREADS = _OpenCVThreads()


# input sizes a detection on the tracked faces' region runs at (one static session each)
CROP_SIZES = (96, 128, 160, 192)
CROP_MARGIN = 0.5  # the region: the faces' boxes and this much of a box's side around them
CROP_MAX_AREA = 0.4  # a region larger than this share of the frame: search the whole frame
FULL_DETECT_MAX_S = 1.0  # with max_faces 0 the whole frame is searched at least this often (s of capture time)


def crop_region(boxes: list, w: int, h: int, det_size: int) -> tuple[tuple[int, int, int, int], int] | None:
    """The square region around ``boxes`` (x1, y1, x2, y2) a detection runs on, and its input size:
    the faces at least as large in the detector's input as in a full-frame search at ``det_size``,
    at most :data:`CROP_SIZES`' largest. None when the region would not be much smaller than the
    frame (then the whole frame is searched)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1, y1 = b[:, 0].min(), b[:, 1].min()
    x2, y2 = b[:, 2].max(), b[:, 3].max()
    m = CROP_MARGIN * float(np.max(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
    side = max(x2 - x1, y2 - y1) + 2 * m
    if side <= 1 or side * side > CROP_MAX_AREA * w * h or side >= min(w, h):
        return None
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0 = int(round(min(max(cx - side / 2, 0), w - side)))
    y0 = int(round(min(max(cy - side / 2, 0), h - side)))
    s = int(round(side))
    want = side * det_size / max(w, h)  # the full search's scale
    size = next((c for c in CROP_SIZES if c >= want), CROP_SIZES[-1])
    if size >= det_size:
        return None
    return (x0, y0, min(x0 + s, w), min(y0 + s, h)), size


class TrackFaces:
    """The live face stage: schedule the detector (on its own thread, or inline), merge its late
    results, move faces between detections by optical flow, and choose the faces to swap.

    With ``detect_on_tracks`` (and a detector that runs at any input size) a detection runs on
    the tracked faces' region at a small input (:func:`crop_region`); the whole frame is searched
    for new faces every ``full_detect_interval`` frames, and whenever no face is tracked."""

    name = "track"

    def __init__(self, pipeline: "VideoPipeline"):
        self.p = pipeline
        self._fresh = True
        self._reset_requested = False
        self._asked: dict[int, tuple] = {}  # frame index -> (capture time, frames processed), detections asked for
        self._n = 0  # frames tracked
        self._last_asked_n: int | None = None
        self._last_full_n: int | None = None  # the frame (of ``_n``) the last full-frame search was asked on
        self._last_full_t = 0.0  # and its capture time
        self._matched = True  # the last frame's faces included the match-mode person (or no match mode)

    def wants(self, opts) -> bool:
        return self.p.analyzer is not None and opts.enable_scrfd and (opts.enable_swap or opts.enable_enhancer)

    def reset(self) -> None:
        """Switched off: faces and results from before describe another moment. (Worker thread.)"""
        p = self.p
        p.tracker.tracks.clear()
        p.scheduler.countdown, p.scheduler.have_faces, p.scheduler.stable = 0, False, False
        self._asked.clear()  # no interval or lag spans a switch-off
        self._last_asked_n = None
        self._last_full_n = None
        self._fresh = True
        p.seen_faces = ()  # nothing tracked is shown (or can be picked) until faces are found again

    def reset_soon(self) -> None:
        """Ask for a reset from another thread: done before the next frame is tracked."""
        self._reset_requested = True

    def close(self) -> None:
        pass

    def process(self, ctx: FrameContext) -> None:
        p, m, o, frame = self.p, self.p.metrics, ctx.opts, ctx.frame
        if self._reset_requested:
            self._reset_requested = False
            self.reset()
        if self._fresh:  # (re)starting: only detections made from now on count
            p._results_from = ctx.index
            self._fresh = False
        p.tracker.track(frame, ctx.index)
        self._n += 1
        requested = False
        det = p.det_res.take_nowait()
        if det is not None:
            p._det_inflight = False
            if det[0] < p._results_from:
                det = None  # made before the stream was (re)activated
        if p.scheduler.should_detect() and not p._det_inflight:
            requested = True
            if len(self._asked) > 8:
                self._asked.clear()  # answers that never came (a reset, a failure)
            self._asked[ctx.index] = (ctx.t_capture, self._n)
            detector = p.analyzer.detector
            region = self._region(frame, o, detector, ctx.t_capture)
            if region is None:
                prep, offset = detector.prepare(frame), None
                if self._last_full_n is not None:
                    m.record("detect.full_interval", self._n - self._last_full_n)
                self._last_full_n, self._last_full_t = self._n, ctx.t_capture
                m.incr("detect.full")
            else:
                (x0, y0, x1, y1), size = region
                prep, offset = detector.prepare(frame[y0:y1, x0:x1], size), (x0, y0)
                m.incr("detect.crop")
                m.set_gauge("detect.crop_size", size)
            if p.detector_async:
                # the worker paints on ``frame``: matching needs an untouched full-size copy
                full = frame.copy() if p.embeds else None
                p._det_inflight = True
                p.det_req.put((ctx.index, prep, full, offset))
            else:
                det = (ctx.index, p._run_detector(prep, frame, offset), offset is not None)
        p.scheduler.on_frame(requested)
        if det is not None:
            d_index, d_faces, on_region = det
            if d_faces is not None:
                before = {t.id for t in p.tracker.tracks}
                p.tracker.update(d_faces, d_index)
                if on_region:  # a face on the region no track matched: rare for a detector that sees the image
                    new = sum(t.id not in before for t in p.tracker.tracks)
                    if new:
                        m.incr("detect.crop_unmatched", new)
                p.tracker.note_frame(frame, ctx.index)
                p.scheduler.on_detections([f.score for f in d_faces], stable=p.tracker.all_stable)
                m.set_gauge("detect.stable_tracks", p.tracker.stable_tracks)
                m.set_gauge("detect.interval_target", p.scheduler.current_interval)
                if p._last_det_index >= 0:
                    m.set_gauge("detect.interval_frames", d_index - p._last_det_index)
                    m.record("detect.interval_captured", d_index - p._last_det_index)  # camera frames
                m.set_gauge("detect.latency_frames", ctx.index - d_index)
                asked = self._asked.pop(d_index, None)
                if asked is not None:  # from the frame's capture to its faces being used
                    m.record("detect.lag", (time.perf_counter() - asked[0]) * 1000)
                    if self._last_asked_n is not None:  # frames the worker processed between two
                        m.record("detect.interval", asked[1] - self._last_asked_n)
                    self._last_asked_n = asked[1]
                p._last_det_index = d_index
        if p._picks:
            self._embed_picked(frame)
        faces = p.tracker.faces(ctx.t_capture if o.enable_smoothing else None)
        fm = p.face_map  # read once: the swap stage gives the faces what this frame chose
        p._frame_map = fm
        if fm is not None:  # every mapped face (max_faces does not apply), each with its own latent
            ctx.faces = choose_mapped(faces, fm, o.match_threshold)
            self._matched = len(ctx.faces) >= len(fm)
        else:
            ctx.faces = select_faces(faces, o.max_faces, p.reference, o.match_threshold)
            self._matched = p.reference is None or bool(ctx.faces)
        h, w = frame.shape[:2]
        p.seen_faces = tuple(FaceView((f.bbox[0] / w, f.bbox[1] / h, f.bbox[2] / w, f.bbox[3] / h), f.track_id,
                                      f.extra.get(LABEL, "") if fm is not None else "") for f in faces)

    def _embed_picked(self, frame: np.ndarray) -> None:
        """Answer :meth:`VideoPipeline.embed_track`: the face's embedding on this frame (before any
        stage paints on it), kept on its track so the face map sees it at once."""
        p = self.p
        with p._picks_lock:
            picks, p._picks = p._picks, []
        rec = p.analyzer.recognizer
        for track_id, fut in picks:
            t = next((t for t in p.tracker.tracks if t.id == track_id), None)
            if not fut.set_running_or_notify_cancel():
                continue
            if rec is None:
                fut.set_exception(MirageError("picking a face needs the recognition model (w600k_r50)",
                                              "run `mirage models download buffalo_l`"))
            elif t is None:
                fut.set_result(None)  # the person left the picture
            else:
                try:
                    t.face.embedding = rec.embed(frame, t.face.kps)
                except Exception as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(t.face.embedding)

    def _region(self, frame: np.ndarray, o, detector, t_capture: float) -> tuple | None:
        """Where this detection runs: the tracked faces' region and its input size, or None for
        the whole frame: no face tracked; fewer tracked than ``max_faces`` asks for (a new face
        would be swapped: look for it at every detection); the match-mode person (or a person of
        the face map) not among them;
        the full search due (every ``full_detect_interval`` frames, and with ``max_faces`` 0 —
        every face — also every :data:`FULL_DETECT_MAX_S` of capture time, so a new face is found
        as soon at 3 FPS as at 30); or the region would not be smaller."""
        tracks = self.p.tracker.tracks
        if not getattr(o, "detect_on_tracks", False) or not getattr(detector, "crops", False) or not tracks:
            return None
        fm = self.p.face_map  # read once: another thread may clear it
        want = int(o.max_faces) if fm is None else len(fm)
        if (want > 0 and len(tracks) < want) or not self._matched:
            return None
        if self._last_full_n is None or self._n - self._last_full_n >= max(1, int(o.full_detect_interval)):
            return None
        if want <= 0 and t_capture - self._last_full_t >= FULL_DETECT_MAX_S:
            return None
        h, w = frame.shape[:2]
        return crop_region([t.face.bbox for t in tracks], w, h, int(detector.det_size))


class VideoPipeline:
    """Owns the threads. Live options are read from ``self.opts`` at the start of every frame."""

    def __init__(self, settings: Settings, metrics: Metrics, source, sinks: list, analyzer=None,
                 swapper=None, latent: np.ndarray | None = None, enhance_stage=None, smoother=None,
                 color_fn: Callable | None = None, reference: np.ndarray | None = None,
                 detector_async: bool = True, keep_original: bool = False, lossless: bool = False,
                 max_frames: int | None = None, parse_stage=None, face_map=None):
        self.metrics = metrics
        self.source = source
        self.sinks = list(sinks)
        self.analyzer = analyzer
        self.swapper = swapper
        self.latent = latent
        self.enhance_stage = enhance_stage
        self.parse_stage = parse_stage
        self.color_fn = color_fn
        self.reference = reference
        self.face_map = face_map  # vision.mapping.FaceMap: a different identity per person, or None
        self._frame_map = None  # the face map the faces of the frame being processed were chosen by
        self.seen_faces: tuple[FaceView, ...] = ()  # the newest frame's tracked faces (replaced whole)
        self._picks: list[tuple[int, Future]] = []  # embed_track() requests for the worker
        self._picks_lock = threading.Lock()
        self._cv_held = False  # this pipeline holds OpenCV at one thread (_OPENCV_THREADS)
        self.detector_async = detector_async
        self.keep_original = keep_original
        self.opts = settings
        self._opts_lock = threading.Lock()
        self.scheduler = DetectionScheduler(settings.detect_interval, settings.redetect_below)
        self.tracker = FaceTracker(settings.stable_confidence, settings.stable_count, smoother=smoother,
                                   hold_frames=settings.track_hold_frames)
        self.in_slot = LatestSlot(on_drop=lambda _: metrics.incr("dropped.worker_busy"))
        self.out_slot = LatestSlot(on_drop=lambda _: metrics.incr("dropped.output_busy"))
        self.det_req = LatestSlot(on_drop=lambda _: metrics.incr("detect.superseded"))
        self.det_res = LatestSlot()
        self._det_inflight = False
        self._stop = threading.Event()
        self.finished = threading.Event()  # set when a finite source ran out and all was sent
        self._threads: list[threading.Thread] = []
        self._subscribers: dict[int, Callable] = {}  # replaced as a whole by the engine
        self._once = _OnceLogger()
        self.errors: dict[str, str] = {}  # cause -> last message, for the status bar (cleared when it works)
        self.error_fixes: dict[str, str] = {}
        self.capture_error: str | None = None
        self._last_det_index = -1
        self._out_times: list[float] = []
        self._results_from = 0
        self.lossless = lossless
        self.max_frames = max_frames  # stop after sending this many frames (``mirage run --frames``)
        self.fatal: Exception | None = None  # a critical sink (a recording) failed: the run stops
        self.sink_errors: dict[int, str] = {}  # id(sink) -> why it failed (sending or closing)
        self._wanted: dict[str, bool] = {}
        # one clock with the voice (control/avsync.py): the engine connects these while a voice path
        # runs; ``audio_latency()`` -> s or None, ``on_video_latency(s)`` for the lip-synced microphone
        self.av = AVSync(metrics)
        self.av.set_trim(settings.av_trim_ms)
        self.audio_latency: Callable[[], float | None] | None = None
        self.on_video_latency: Callable[[float], None] | None = None
        # the degrade ladder (control/ladder.py): overrides on top of the user's settings
        self.ladder = DegradeLadder([], enabled=bool(settings.adapt_video) and not lossless)
        self._adapt_lock = threading.Lock()  # the worker steps the ladder; set_option rebuilds it
        self.adapt_reason: str | None = None
        self._stage_opts = settings
        self._scale_to = 0  # short side the stages run at (0: full size)
        self._fps_cap = 0.0
        self._rate = FrameRateCap()
        self._proc_shape: tuple | None = None  # the size the stages ran at on the last frame
        self._rebuild_ladder()
        # the frame stages, in order; the models are read through the pipeline, so models and
        # identities handed over while it runs take effect on the next frame
        self.stages = [check_stage(st) for st in (
            TrackFaces(self),
            ParseFrames(lambda: self.parse_stage),
            SwapStage(lambda: self.swapper, self._swap_latent, color_fn, metrics),
            EnhanceFrames(lambda: self.enhance_stage),
            AiMark(),
        )]

    # ---- live control --------------------------------------------------------------------
    def set_option(self, name: str, value: Any) -> None:
        with self._opts_lock:
            self.opts = self.opts.replace(**{name: value})
        if name == "detect_interval":
            self.scheduler.interval = max(1, int(value))
        elif name == "det_size" and self.analyzer is not None:
            self.analyzer.detector.set_det_size(int(value))
        elif name == "av_trim_ms":
            self.av.set_trim(float(value))
        elif name == "track_hold_frames":
            self.tracker.hold_frames = max(0, int(value))  # read by the worker at the next detection
        with self._adapt_lock:
            if name == "adapt_video":
                self.ladder.set_enabled(bool(value) and not self.lossless)
            if name in ("det_size", "enable_enhancer", "enhancer_interval", "enable_scrfd", "pixel_boost"):
                self._rebuild_ladder()  # the user chose anew: the ladder starts from their settings
            self._apply_adapt()

    # ---- the degrade ladder ------------------------------------------------------------------
    def target_fps(self) -> float:
        return float(getattr(self.source, "fps", 0) or self.opts.capture_fps or 30)

    def _rebuild_ladder(self) -> None:
        o = self.opts
        w, h = getattr(self.source, "size", (0, 0)) or (0, 0)
        det = self.analyzer.detector if self.analyzer is not None else None
        # only a detector with a free input size gains from a smaller one (not a fixed-size export,
        # not OpenCV's Haar cascade), and only while detection runs at all
        sizable = det is not None and hasattr(det, "fixed_size") and det.fixed_size is None and o.enable_scrfd
        self.ladder.rebuild(build_steps(bool(o.enable_enhancer), int(o.det_size) if sizable else 0,
                                        self.target_fps(), min(w, h) if w and h else 0,
                                        pixel_boost=int(o.pixel_boost)))

    def _apply_adapt(self) -> None:
        """Put the ladder's active steps on top of the user's settings (never into them)."""
        o = self.opts
        ov = self.ladder.overrides()
        changes: dict[str, Any] = {}
        if ov.get("enhancer") == 0:
            changes["enable_enhancer"] = False
        if "det_size" in ov:
            changes["det_size"] = int(ov["det_size"])
        if "boost" in ov:
            changes["pixel_boost"] = int(ov["boost"])  # the swap stage reads it per frame
        eff = o.replace(**changes) if changes else o
        factor = int(ov.get("enhancer") or 1)
        st = self.enhance_stage
        if st is not None and hasattr(st, "set_interval"):
            try:
                st.set_interval(max(1, int(o.enhancer_interval)) * factor)
            except ValueError:
                pass
        det = self.analyzer.detector if self.analyzer is not None else None
        if det is not None and getattr(det, "fixed_size", None) is None and \
                getattr(det, "det_size", eff.det_size) != eff.det_size:
            det.set_det_size(int(eff.det_size))
        self._scale_to = int(ov.get("scale") or 0)  # the worker resets the tracks when the size changes
        self._fps_cap = float(ov.get("fps") or 0.0)
        self._rate.set(self._fps_cap)
        self._stage_opts = eff
        self.adapt_reason = self.ladder.reason()
        self.metrics.set_gauge("adapt.level", self.ladder.level)

    def _adapt(self, worker_ms: float) -> None:
        fps = self._fps_cap or self.target_fps()
        with self._adapt_lock:
            ev = self.ladder.update(worker_ms / (1000.0 / fps), behind=self.av.behind)
            if ev is not None:
                _, level, reason = self.ladder.log[-1]
                log.warning("adapt: %s (level %d of %d)", reason, level, len(self.ladder.steps))
                self.metrics.incr(f"adapt.{ev}")
                self._apply_adapt()

    def set_latent(self, latent: np.ndarray | None) -> None:
        self.latent = latent  # an atomic reference swap: the next frame uses it

    def use_models(self, analyzer, swapper, latent: np.ndarray | None) -> None:
        """New models for the running stream (after a download): the next frame uses them. The
        tracks and any detection in flight describe what the old detector saw, so they go."""
        with self._opts_lock:
            self.analyzer, self.swapper, self.latent = analyzer, swapper, latent
        self.stages[0].reset_soon()  # on the worker's thread, before its next frame
        with self._adapt_lock:
            self._rebuild_ladder()  # another detector: its sizes may differ
            self._apply_adapt()

    def use_enhancer(self, stage) -> None:
        self.enhance_stage = stage  # read by the enhance stage on the next frame
        with self._adapt_lock:
            self._apply_adapt()  # the ladder's enhancer interval applies to the new one too

    def set_reference(self, embedding: np.ndarray | None) -> None:
        self.reference = embedding

    def use_parser(self, stage) -> None:
        self.parse_stage = stage  # read by the parse stage on the next frame

    def set_face_map(self, face_map) -> None:
        """A :class:`~mirage_desktop.vision.mapping.FaceMap` (None: one identity for all); faces are
        embedded at every detection while one is set. The next frame uses it."""
        self.face_map = face_map

    @property
    def embeds(self) -> bool:
        """Faces are embedded at each detection (a match reference or a face map is set)."""
        return self.reference is not None or self.face_map is not None

    def _swap_latent(self):
        """For the swap stage: with a face map (the one this frame's faces were chosen by) a
        callable giving each face its own latent; else the identity's latent for every face."""
        return face_latents if self._frame_map is not None else self.latent

    def embed_track(self, track_id: int) -> Future:
        """The embedding of the tracked face ``track_id`` on the next frame the worker tracks:
        a Future of the (512,) embedding, of None when the face is gone, failed with the reason
        when it cannot be made; cancelled when the stream stops first."""
        fut: Future = Future()
        with self._picks_lock:
            if self._stop.is_set():
                fut.cancel()
            else:
                self._picks.append((track_id, fut))
        return fut


    # ---- threads ---------------------------------------------------------------------------
    def start(self) -> None:
        if not self._cv_held:
            _OPENCV_THREADS.hold()
            self._cv_held = True
        for st in (self.parse_stage, self.enhance_stage):  # shared across streams: what they carry per
            if st is not None and hasattr(st, "reset"):  # track describes the last stream's (ids restart at 1)
                st.reset()
        self._stop.clear()
        self.finished.clear()
        w, h = self.source.size if hasattr(self.source, "size") else (0, 0)
        opened = []
        try:
            for s in self.sinks:
                s.open(w, h, getattr(self.source, "fps", 30) or 30)
                opened.append(s)
        except BaseException:
            for s in opened:  # a later sink failed: do not leave the earlier ones open
                try:
                    s.close()
                except Exception:
                    pass
            if self._cv_held:  # nor OpenCV held at one thread for a stream that never ran
                self._cv_held = False
                _OPENCV_THREADS.release()
            raise
        targets = [("mirage-capture", self._capture_loop), ("mirage-worker", self._worker_loop),
                   ("mirage-output", self._output_loop)]
        if self.detector_async and self.analyzer is not None:
            targets.append(("mirage-detector", self._detector_loop))
        for name, fn in targets:
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._picks_lock:
            picks, self._picks = self._picks, []
        for _, fut in picks:
            fut.cancel()  # no frame will answer them
        for s in (self.in_slot, self.out_slot, self.det_req, self.det_res):
            s.close()
        capture_alive = False
        for t in self._threads:
            t.join(timeout)
            if t.name == "mirage-capture" and t.is_alive():
                capture_alive = True
        self._threads.clear()
        if self._cv_held:
            self._cv_held = False
            _OPENCV_THREADS.release()
        for st in (self.enhance_stage, self.parse_stage):
            if st is not None and hasattr(st, "close"):
                st.close()  # its background thread; it restarts with the next stream
        for s in self.sinks:
            try:
                s.close()
            except Exception as exc:  # closing must not raise out of stop(); the run reports it
                self.sink_errors[id(s)] = " ".join(str(exc).split())  # the final word (frames kept)
                log.warning("closing %s failed: %s", s.describe(), exc)
        if capture_alive:
            # the capture thread is stuck in read() (a stalled driver): it closes the source
            # itself when read() returns; closing it under its feet is undefined behaviour
            log.warning("%s is not answering; it will be released when its read returns", self.source.name)

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception as exc:
            log.warning("closing %s failed: %s", getattr(self.source, "name", "source"), exc)

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def _capture_loop(self) -> None:
        idx = 0
        camera = getattr(self.source, "kind", "") == "camera"
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read()
                    if self.capture_error:
                        log.warning("%s is back", self.source.name)
                    self.capture_error = None
                except Exception as exc:  # a driver error must not freeze the stream silently
                    self.capture_error = " ".join(str(exc).split())[:300] or type(exc).__name__
                    self.metrics.incr("errors.capture")
                    self._once("capture:" + type(exc).__name__, "capture: %s%s", exc,
                               " (retrying every 2 s)" if camera else "")
                    if not camera and not isinstance(exc, MirageError):
                        break  # a file that fails to decode: end of stream, with the reason shown
                    self._stop.wait(2.0)
                    continue
                if frame is None:
                    if camera:
                        continue
                    break  # end of a finite source
                self.metrics.incr("frames.in")
                if idx % 30 == 0 and getattr(self.source, "measured_fps", None):
                    self.metrics.set_gauge("capture.fps", round(self.source.measured_fps, 1))
                self.in_slot.put(FramePacket(idx, time.perf_counter(), frame), block=self.lossless)
                idx += 1
        finally:
            self.in_slot.close()
            self._close_source()

    def _detector_loop(self) -> None:
        while not self._stop.is_set():
            req = self.det_req.get(timeout=0.2)
            if req is None:
                if self.det_req.closed:
                    break
                continue
            index, prep, full, offset = req
            faces = None
            try:
                faces = self._run_detector(prep, full, offset)
            finally:
                self.det_res.put((index, faces, offset is not None))  # always answer, or detection stops for good

    def _run_detector(self, prep, full: np.ndarray | None = None, offset: tuple | None = None) -> list[Face] | None:
        """Detect on a prepared input; ``offset``: it is the region at (x0, y0) of the frame."""
        t0 = time.perf_counter()
        try:
            faces = self.analyzer.detector.detect_prepared(prep, 0)
        except Exception as exc:
            self._model_error("detect", exc)
            return None
        finally:
            self.metrics.record("detect", (time.perf_counter() - t0) * 1000)
        if offset is not None:
            for f in faces:
                f.bbox = f.bbox + [offset[0], offset[1], offset[0], offset[1]]
                f.kps = f.kps + offset
        self._works("detect")
        if self.embeds and self.analyzer.recognizer is not None and faces and full is not None:
            t1 = time.perf_counter()
            try:  # embeddings from the full-resolution frame, like the reference photo's
                for f in faces:
                    f.embedding = self.analyzer.recognizer.embed(full, f.kps)
            except Exception as exc:
                self._model_error("embed", exc)
            else:
                self._works("embed")
            self.metrics.record("embed", (time.perf_counter() - t1) * 1000)
        self.metrics.incr("detect.runs")
        return faces

    def _model_error(self, stage: str, exc: Exception) -> None:
        msg = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
        self.errors[stage] = msg
        self.error_fixes[stage] = " ".join(str(getattr(exc, "fix", None) or "").split())
        self.metrics.incr(f"errors.{stage}")
        self._once(f"{stage}:{type(exc).__name__}:{msg[:60]}", "%s failed, frame sent unswapped: %s", stage, msg)

    def _worker_loop(self) -> None:
        try:
            self._worker_frames()
        finally:
            self.out_slot.close()

    def _worker_frames(self) -> None:
        while True:
            pkt = self.in_slot.get(timeout=0.2)
            if pkt is None:
                if self.in_slot.closed or self._stop.is_set():
                    break
                continue
            if not self._rate.admit(pkt.t_capture):
                self.metrics.incr("dropped.adapt_fps")  # the ladder lowered the frame rate
                continue
            t0 = time.perf_counter()
            model0 = sum(self.metrics.total(n) for n in WORKER_MODEL_STAGES)
            try:
                self._process(pkt)
            except Exception as exc:  # never let one frame kill the stream
                self._model_error("frame", exc)
            else:
                self._works("frame")
            worker_ms = (time.perf_counter() - t0) * 1000
            model_ms = sum(self.metrics.total(n) for n in WORKER_MODEL_STAGES) - model0
            self.metrics.record("worker", worker_ms)
            self.metrics.record("worker.outside_model", max(worker_ms - model_ms, 0.0))
            if self.ladder.enabled:
                self._adapt(worker_ms)
            self.out_slot.put(pkt, block=self.lossless)

    def _process(self, pkt: FramePacket) -> None:
        if self.keep_original:
            pkt.original = pkt.frame.copy()
        frame, scale = pkt.frame, self._scale_to
        h, w = frame.shape[:2]
        small = None
        if scale and min(h, w) > scale:  # the ladder's lowest steps: process fewer pixels
            import cv2

            f = scale / min(h, w)
            # bilinear: INTER_AREA costs 10-17 ms on a 1280x720 frame here (non-integer ratios),
            # more than the step saves; bilinear 1-3 ms, and the frame is scaled back up anyway
            small = cv2.resize(frame, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_LINEAR)
            frame = small
        if frame.shape != self._proc_shape:  # read once per frame, on this thread: no race
            if self._proc_shape is not None:
                self.stages[0].reset()  # the tracks were found at the other size
            self._proc_shape = frame.shape
        ctx = FrameContext(frame, pkt.index, pkt.t_capture, self._stage_opts)
        run_stages(self.stages, ctx, self.metrics, self._stage_result, self._wanted)
        pkt.faces, pkt.swapped = ctx.faces, ctx.swapped
        if self._frame_map is not None:  # who was given which identity, for the preview's tags
            ph, pw = frame.shape[:2]
            pkt.mapped = [((f.bbox[0] / pw, f.bbox[1] / ph, f.bbox[2] / pw, f.bbox[3] / ph), f.extra.get(LABEL, ""))
                          for f in ctx.faces]
        if small is not None:  # back to the camera's size: the virtual camera keeps its format
            import cv2

            cv2.resize(small, (w, h), dst=pkt.frame, interpolation=cv2.INTER_LINEAR)

    def _stage_result(self, stage: str, exc: Exception | None) -> None:
        if exc is not None:
            self._model_error(stage, exc)
        else:
            self._works(stage)

    def _works(self, cause: str) -> None:
        """``cause`` worked (or is not running): the status no longer shows it failing."""
        if cause in self.errors:
            self.errors.pop(cause, None)
            self.error_fixes.pop(cause, None)

    def _output_loop(self) -> None:
        try:
            self._output_frames()
        finally:
            self.finished.set()

    def _output_frames(self) -> None:
        """Take processed frames into the A/V hold; send each when it is due (at once without a
        voice path), in order; at the end of a finite input the held frames are still sent."""
        av = self.av
        sent = 0
        while self.max_frames is None or sent < self.max_frames:
            due_at = av.next_due()
            wait = 0.2 if due_at is None else min(0.2, max(0.0, due_at - time.perf_counter()))
            pkt = self.out_slot.get(timeout=wait) if wait > 0 else self.out_slot.take_nowait()
            if self._stop.is_set():
                break  # stopping: what is held is not sent in a burst
            if pkt is not None:
                self._sync_clock()
                av.push(pkt)
            elif self.out_slot.closed:
                if not len(av):
                    break  # a finite input ended and every frame went out
                if wait > 0:
                    self._stop.wait(wait)  # the last frames still leave at their due times
            for p in av.pop_due():
                if self.max_frames is not None and sent >= self.max_frames:
                    break
                if not self._send(p):
                    return
                sent += 1

    def _sync_clock(self) -> None:
        """Read the voice path's latency (the master); tell a lip-synced microphone the video's."""
        lat = self.audio_latency if not self.lossless else None  # a file render has no live voice
        try:
            self.av.set_audio_latency(lat() if lat is not None else None)
        except Exception as exc:  # the voice path stopped under our feet: video leaves as it comes
            self.av.set_audio_latency(None)
            self._once(f"av:{exc}", "A/V sync: cannot read the voice latency: %s", exc)
        cb = self.on_video_latency
        if cb is not None:
            v = self.av.ready_latency_s()
            if v is not None:
                try:
                    cb(v)
                except Exception as exc:
                    self._once(f"av-target:{exc}", "A/V sync: cannot delay the microphone: %s", exc)

    def _send(self, pkt: FramePacket) -> bool:
        """Send one frame to every sink; False when a critical sink failed (the run stops)."""
        t = time.perf_counter()
        for s in self.sinks:
            if id(s) in self.sink_errors:
                continue
            try:
                s.send(pkt.frame)
            except Exception as exc:
                self._model_error(f"output:{s.name}", exc)
                if getattr(s, "critical", False):  # a recording: stop rather than lose frames silently
                    self.sink_errors[id(s)] = " ".join(str(exc).split())
                    self.fatal = exc
            else:
                self._works(f"output:{s.name}")
        if self.fatal is not None:
            return False
        for fn in self._subscribers.values():
            try:
                fn(pkt)
            except Exception as exc:
                self._once(f"sub:{exc}", "frame subscriber failed: %s", exc)
        now = time.perf_counter()
        self.av.sent(pkt, t)
        self.metrics.record("output", (now - t) * 1000)
        self.metrics.record("total", (now - pkt.t_capture) * 1000)
        self.metrics.incr("frames.out")
        self.metrics.incr("faces.swapped", pkt.swapped)
        self._out_times.append(now)
        while self._out_times and now - self._out_times[0] > 2.0:
            self._out_times.pop(0)
        if len(self._out_times) >= 2:
            self.metrics.set_gauge("fps", (len(self._out_times) - 1) / (self._out_times[-1] - self._out_times[0]))
        return True
