"""Detection on the tracked faces' region (``detect_on_tracks``): with a detector whose answers
follow the image (``build_marker_scrfd``: a pure-colour square is a face), a detection on the
region finds the face where it is now, a face appearing outside the region is found by the
full-frame search, and the setting off (or a fixed-size detector) searches the whole frame.

No waiting for time to pass: the tests wait for counters and for detections they record, with
the hang guard only."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tests_support import HANG_GUARD_S, wait_counter

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.models.runtime import create_session
from mirage_desktop.outputs.sinks import NullSink
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.vision.detector import SCRFD
from mirage_desktop.vision.pipeline import CROP_SIZES, VideoPipeline, crop_region

W, H = 1280, 720
RED = (560, 240, 680, 390)  # x1 y1 x2 y2 of the first face (red square)
GREEN = (1040, 60, 1160, 210)  # a face that appears later, far from the first


def _frame(boxes: dict[int, tuple]) -> np.ndarray:
    img = np.full((H, W, 3), 20, np.uint8)
    for ch, (x1, y1, x2, y2) in boxes.items():
        img[y1:y2, x1:x2, ch] = 255
    return img


class MarkerSource:
    """Frames of coloured squares; the test changes what they show with :meth:`show` and learns
    the index of the first frame that shows it (the pipeline numbers frames as they are read)."""

    kind = "image"
    name = "markers"
    fps = 100.0
    size = (W, H)

    def __init__(self, boxes: dict[int, tuple]):
        self._frame = _frame(boxes)
        self._lock = threading.Lock()
        self.read_count = 0
        self.shown_at: int | None = None
        self._pending: np.ndarray | None = None

    def show(self, boxes: dict[int, tuple]) -> None:
        with self._lock:
            self._pending = _frame(boxes)

    def read(self) -> np.ndarray:
        import time

        time.sleep(0.01)  # pacing like a 100 fps camera, not a wait in the test
        with self._lock:
            if self._pending is not None:
                self._frame, self._pending = self._pending, None
                self.shown_at = self.read_count
            self.read_count += 1
            return self._frame.copy()

    def close(self) -> None:
        pass


class Detections:
    """Every detection the pipeline runs: (frame index asked for, region offset or None, input
    size, faces in frame pixels). ``when(pred)`` waits for one that fulfils ``pred``."""

    def __init__(self, monkeypatch):
        self.seen: list[tuple] = []
        self._cv = threading.Condition()
        orig_loop = VideoPipeline._detector_loop
        run = VideoPipeline._run_detector
        rec = self

        def recording(pipe, prep, full=None, offset=None):
            faces = run(pipe, prep, full, offset)
            with rec._cv:
                rec.seen.append((pipe._asking, offset, prep[2], [f.bbox.copy() for f in faces or []]))
                rec._cv.notify_all()
            return faces

        def loop(pipe):
            get = pipe.det_req.get

            def tagged(timeout=None):  # the frame index a request was made on, for the record
                req = get(timeout)
                if req is not None:
                    pipe._asking = req[0]
                return req

            pipe.det_req.get = tagged
            orig_loop(pipe)

        monkeypatch.setattr(VideoPipeline, "_run_detector", recording)
        monkeypatch.setattr(VideoPipeline, "_detector_loop", loop)

    def when(self, pred) -> int:
        """The position in :attr:`seen` of the first detection that fulfils ``pred``."""
        with self._cv:
            ok = self._cv.wait_for(lambda: any(pred(d) for d in self.seen), HANG_GUARD_S)
            assert ok, f"no such detection among {len(self.seen)}: {self.seen[-3:]}"
            return next(i for i, d in enumerate(self.seen) if pred(d))


def _near(box, want, tol=4.0) -> bool:
    return bool(np.abs(np.asarray(box) - np.asarray(want, float)).max() <= tol)


@pytest.fixture
def marker_engine(model_factory, astronaut, tmp_path):
    def make(**settings):
        paths = dict(model_factory(astronaut))
        paths["det_10g"] = synthetic.build_marker_scrfd(tmp_path / "det_marker.onnx")
        settings = {"detect_interval": 2, "full_detect_interval": 20, "max_faces": 1, **settings}
        eng = Engine(Settings(**settings), model_overrides=paths)
        eng.load_models()
        return eng

    return make


def test_the_marker_detector_finds_each_square_where_it_is_at_any_input_size(tmp_path):
    det = SCRFD(create_session(synthetic.build_marker_scrfd(tmp_path / "m.onnx"), "cpu"), 640)
    assert det.crops
    img = _frame({2: RED, 1: GREEN})
    for size in (640, 800):  # (a square must be ~50 px or more in the input: stride-32 cells)
        det.set_det_size(size)
        found = sorted(det.detect(img), key=lambda f: f.bbox[0])
        assert len(found) == 2 and _near(found[0].bbox, RED) and _near(found[1].bbox, GREEN)
        assert all(f.score > 0.9 for f in found)
    moved = _frame({2: (RED[0] + 37, RED[1] + 21, RED[2] + 37, RED[3] + 21)})
    crop = moved[200:500, 480:780]
    (f,) = det.detect_prepared(det.prepare(crop, 160))
    assert _near(f.bbox + [480, 200, 480, 200], (RED[0] + 37, RED[1] + 21, RED[2] + 37, RED[3] + 21), 5)
    assert not det.detect(_frame({}))  # nothing bright: no face
    det.handle.provider = "TensorrtExecutionProvider"  # an engine per input size: never on a region
    assert not det.crops


def test_a_fixed_size_detector_never_runs_on_a_region(tmp_path):
    face = synthetic.ScriptedFace((200, 150, 330, 300), np.zeros((5, 2)))
    det = SCRFD(create_session(synthetic.build_scrfd(tmp_path / "d.onnx", [face], 640), "cpu"), 640)
    assert det.fixed_size == 640 and not det.crops
    assert det.prepare(np.zeros((720, 1280, 3), np.uint8), 160)[2] == 640  # its own size, whatever is asked


def test_the_region_holds_every_tracked_face_and_is_refused_when_it_would_not_be_smaller():
    (x0, y0, x1, y1), size = crop_region([RED], W, H, 640)
    assert x0 <= RED[0] - 60 and y0 <= RED[1] - 60 and x1 >= RED[2] + 60 and y1 >= RED[3] + 60
    assert x1 - x0 == y1 - y0 and size in CROP_SIZES and size < 640
    # the faces at least as large in the input as in a full-frame search at 640
    assert size / (x1 - x0) >= 640 / W - 1e-9
    (x0, y0, x1, y1), _ = crop_region([(0, 0, 100, 100)], W, H, 640)  # at the border: kept inside
    assert x0 == 0 and y0 == 0
    assert crop_region([RED, GREEN], W, H, 640) is None  # two faces far apart: the whole frame
    assert crop_region([(300, 100, 800, 650)], W, H, 640) is None  # a face filling the frame


def test_a_detection_on_the_region_finds_the_face_where_it_now_is(marker_engine, monkeypatch):
    seen = Detections(monkeypatch)
    eng = marker_engine()
    m = eng.metrics
    src = MarkerSource({2: RED})
    eng.start(src, [NullSink()])
    try:
        first = seen.seen[seen.when(lambda d: d[1] is None and d[3])]  # the first search: the whole frame
        assert _near(first[3][0], RED)
        wait_counter(m, "detect.crop", 2)
        moved = (RED[0] + 30, RED[1] + 18, RED[2] + 30, RED[3] + 18)
        src.show({2: moved})
        on_region = seen.seen[seen.when(lambda d: d[1] is not None and src.shown_at is not None
                                        and d[0] >= src.shown_at)]
        wait_counter(m, "detect.full", 5)
    finally:
        eng.stop()
    _, offset, size, faces = on_region
    assert size in CROP_SIZES and offset != (0, 0)  # a small input, a region inside the frame
    assert len(faces) == 1 and _near(faces[0], moved, 5)  # in frame pixels, where the square now is
    assert m.counter("detect.crop_unmatched") == 0  # every face found on the region was a tracked one
    # the whole frame is searched at the low rate only (worker frames between two full searches)
    full = m.histogram("detect.full_interval").values()
    # (one may come sooner: a search is due at once when no face is tracked, e.g. after the jump)
    assert full.size >= 4 and (full >= 20).sum() >= full.size - 1


def test_a_face_that_appears_outside_the_region_is_found_by_the_full_frame_search(marker_engine, monkeypatch):
    seen = Detections(monkeypatch)
    eng = marker_engine()
    m = eng.metrics
    src = MarkerSource({2: RED})
    eng.start(src, [NullSink()])
    try:
        wait_counter(m, "detect.crop", 3)  # tracking the red face, detecting on its region
        full_before = m.counter("detect.full")
        src.show({2: RED, 1: GREEN})
        at = seen.when(lambda d: src.shown_at is not None and d[0] >= src.shown_at
                       and any(_near(b, GREEN) for b in d[3]))
        assert m.wait_for("frames.out", m.counter("frames.out") + 3, HANG_GUARD_S)
        boxes = [t.face.bbox.copy() for t in eng.pipeline.tracker.tracks]
    finally:
        eng.stop()
    assert seen.seen[at][1] is None and m.counter("detect.full") > full_before  # a full-frame search found it
    # the region searches made after it appeared and before that did not see it (outside the region)
    before = [d for d in seen.seen[:at] if d[0] >= src.shown_at and d[1] is not None]
    assert all(not any(_near(b, GREEN, 20) for b in d[3]) for d in before)
    assert any(_near(b, GREEN, 8) for b in boxes) and any(_near(b, RED, 8) for b in boxes)


def test_with_the_setting_off_every_detection_searches_the_whole_frame(marker_engine, monkeypatch):
    seen = Detections(monkeypatch)
    eng = marker_engine(detect_on_tracks=False)
    m = eng.metrics
    eng.start(MarkerSource({2: RED}), [NullSink()])
    try:
        wait_counter(m, "detect.runs", 8)
    finally:
        eng.stop()
    assert m.counter("detect.crop") == 0 and m.counter("detect.full") >= 8
    assert all(d[1] is None and d[2] == 640 for d in seen.seen)
    assert all(_near(d[3][0], RED) for d in seen.seen[1:])


def test_while_fewer_faces_are_tracked_than_wanted_every_detection_searches_the_whole_frame(marker_engine,
                                                                                        monkeypatch):
    """max_faces 2 and one face: a second one would be swapped, so it is looked for at every
    detection (never only on the first face's region)."""
    seen = Detections(monkeypatch)
    eng = marker_engine(max_faces=2)
    m = eng.metrics
    src = MarkerSource({2: RED})
    eng.start(src, [NullSink()])
    try:
        wait_counter(m, "detect.runs", 6)
        src.show({2: RED, 1: GREEN})
        at = seen.when(lambda d: src.shown_at is not None and d[0] >= src.shown_at
                       and any(_near(b, GREEN) for b in d[3]))
        assert seen.seen[at][0] - src.shown_at <= 2 * eng.settings.detect_interval + 2  # the next detections
    finally:
        eng.stop()
    assert m.counter("detect.crop") == 0


def test_with_every_face_wanted_the_whole_frame_is_searched_every_so_often_in_capture_time(marker_engine,
                                                                                          monkeypatch):
    """max_faces 0: besides the frame count, a full search at least every FULL_DETECT_MAX_S of
    capture time (here made short, with the frame count out of reach), so a new face is found as
    soon on a slow machine as on a fast one. With max_faces 1 and a face tracked the frame count
    alone rules."""
    import mirage_desktop.vision.pipeline as pl

    monkeypatch.setattr(pl, "FULL_DETECT_MAX_S", 0.05)
    counts = {}
    for want in (0, 1):
        eng = marker_engine(max_faces=want, full_detect_interval=1000)
        m = eng.metrics
        eng.start(MarkerSource({2: RED}), [NullSink()])
        try:
            wait_counter(m, "detect.crop", 1)  # tracking: from here on the rules decide
            full0 = m.counter("detect.full")
            wait_counter(m, "detect.crop", 8)  # >= 7 detections later: >= 140 ms at 100 fps, every 2nd frame
            counts[want] = m.counter("detect.full") - full0
        finally:
            eng.stop()
    assert counts[0] >= 2  # the time rule: full searches between the region ones
    assert counts[1] == 0  # the frame count alone (never reached here)
