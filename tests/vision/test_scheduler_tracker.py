"""The detection schedule on scripted confidence sequences; tracking between detections."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_desktop.vision.face import Face
from mirage_desktop.vision.tracking import DetectionScheduler, FaceTracker, select_faces


def _run(scheduler: DetectionScheduler, scores_per_detection, n_frames):
    """Simulate frames; each detection returns the next scripted score list. Returns detect frames."""
    it = iter(scores_per_detection)
    frames = []
    for i in range(n_frames):
        det = scheduler.should_detect()
        scheduler.on_frame(det)  # the order the pipeline uses: start the detector, then read its result
        if det:
            frames.append(i)
            scheduler.on_detections(next(it, [0.95]))
    return frames


def test_detects_every_nth_frame_when_confident():
    assert _run(DetectionScheduler(5), [[0.95]] * 10, 21) == [0, 5, 10, 15, 20]
    assert _run(DetectionScheduler(3), [[0.9]] * 10, 10) == [0, 3, 6, 9]


def test_low_confidence_redetects_on_the_next_frame():
    # second detection is unsure (0.6 < 0.70): the detector runs again on the very next frame
    assert _run(DetectionScheduler(5), [[0.95], [0.6], [0.95], [0.95]], 12) == [0, 5, 6, 11]


def test_no_face_keeps_looking_every_frame():
    assert _run(DetectionScheduler(5), [[], [], [0.9], [0.9]], 9) == [0, 1, 2, 7]


def _face(x, score):
    kps = np.array([[x + 30, 40], [x + 70, 40], [x + 50, 60], [x + 35, 80], [x + 65, 80]], float)
    return Face(np.array([x, 0, x + 100, 110], float), kps, score)


def test_track_becomes_stable_after_three_confident_detections():
    tr = FaceTracker(stable_confidence=0.85, stable_count=3)
    seq = [0.9, 0.9, 0.9, 0.8, 0.9, 0.9, 0.95]
    stable = []
    for i, s in enumerate(seq):
        tr.update([_face(10 + i, s)], i)
        stable.append(tr.faces()[0].stable)
    assert stable == [False, False, True, False, False, False, True]  # 0.8 restarts the count
    assert len({f.track_id for f in tr.faces()}) == 1  # the same person all along


def test_tracker_follows_a_moving_face_between_detections(astronaut):
    from tests_support import shifted

    from mirage_desktop.vision.detector import HaarFaceDetector

    (face,) = HaarFaceDetector().detect(astronaut)
    tr = FaceTracker()
    tr.update([face], 0)
    tr.note_frame(astronaut, 0)
    for i in range(1, 6):
        tr.track(shifted(astronaut, 4 * i, 2 * i), i)
    moved = tr.faces()[0]
    np.testing.assert_allclose(moved.kps - face.kps, np.tile([20, 10], (5, 1)), atol=1.5)


def test_late_detection_is_moved_forward_by_the_tracked_motion(astronaut):
    from tests_support import shifted

    from mirage_desktop.vision.detector import HaarFaceDetector

    (face,) = HaarFaceDetector().detect(astronaut)
    tr = FaceTracker()
    tr.update([face], 0)
    tr.note_frame(astronaut, 0)
    for i in range(1, 4):
        tr.track(shifted(astronaut, 5 * i, 0), i)
    # a detection made on frame 1 (face shifted by 5) arrives at frame 3 (shifted by 15)
    late = Face(face.bbox + [5, 0, 5, 0], face.kps + [5, 0], 0.95)
    tr.update([late], 1)
    np.testing.assert_allclose(tr.faces()[0].kps - face.kps, np.tile([15, 0], (5, 1)), atol=1.5)


def test_select_largest_first_and_by_identity():
    a, b, c = _face(0, 0.9), _face(200, 0.9), _face(400, 0.9)
    b.bbox = np.array([200, 0, 400, 220], float)
    e = np.eye(3, 512)
    a.embedding, b.embedding, c.embedding = e[0], e[1], e[2]
    assert select_faces([a, b, c], 1) == [b]
    assert select_faces([a, b, c], 2)[0] is b
    assert select_faces([a, b, c], 5, reference=e[2]) == [c]
    assert select_faces([a, b, c], 0) == []


def test_box_keeps_its_shape_when_the_head_rolls():
    from mirage_desktop.vision.tracking import _move_box

    th = np.radians(20)
    m = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0]])
    box = _move_box(m, np.array([100.0, 100, 193, 193]))
    assert box[2] - box[0] == pytest.approx(93) and box[3] - box[1] == pytest.approx(93)


def test_a_detection_older_than_the_history_makes_no_ghost(astronaut):
    from tests_support import shifted

    from mirage_desktop.vision.detector import HaarFaceDetector

    (face,) = HaarFaceDetector().detect(astronaut)
    tr = FaceTracker()
    tr.update([face], 0)
    tr.note_frame(astronaut, 0)
    for i in range(1, 300):
        tr.track(shifted(astronaut, min(i, 60), 0), i)
    tr.update([face], 1)  # from frame 1, long gone from the motion history
    assert len(tr.tracks) == 1
    np.testing.assert_allclose(tr.faces()[0].kps - face.kps, np.tile([60, 0], (5, 1)), atol=2)


def _run_with_tracker(scheduler: DetectionScheduler, scores_per_detection, n_frames):
    """As _run, with a real tracker deciding stability (3 detections >= 0.85) after each detection."""
    tr = FaceTracker(stable_confidence=0.85, stable_count=3)
    it = iter(scores_per_detection)
    frames = []
    for i in range(n_frames):
        det = scheduler.should_detect()
        scheduler.on_frame(det)
        if det:
            frames.append(i)
            scores = next(it, [0.95])
            tr.update([_face(10, s) for s in scores], i)
            scheduler.on_detections(scores, stable=tr.all_stable)
    return frames


def test_a_stable_face_is_detected_less_often():
    # interval 5 until three confident detections make the track stable, then every 10th frame
    frames = _run_with_tracker(DetectionScheduler(5), [[0.95]] * 20, 50)
    assert frames == [0, 5, 10, 20, 30, 40]


def test_losing_confidence_ends_the_stretch_at_once():
    # stable (every 10th) until a detection scores 0.6: the next frame re-detects, then every 5th
    # frame until three confident detections make the track stable again
    seq = [[0.95], [0.95], [0.95], [0.6], [0.95], [0.95], [0.95], [0.95]]
    frames = _run_with_tracker(DetectionScheduler(5), seq, 50)
    assert frames == [0, 5, 10, 20, 21, 26, 31, 41]


def test_stretch_one_keeps_the_plain_interval_for_stable_faces():
    frames = _run_with_tracker(DetectionScheduler(5, stable_stretch=1), [[0.95]] * 20, 30)
    assert frames == [0, 5, 10, 15, 20, 25]


def test_the_pipeline_shows_the_schedule_in_its_metrics(model_factory, astronaut):
    import threading

    from mirage_desktop.config import Settings
    from mirage_desktop.engine import Engine
    from mirage_desktop.vision.capture import ImageSource

    eng = Engine(Settings(), model_overrides=model_factory(astronaut))
    eng.load_models()
    eng.set_source_photos([astronaut[:, ::-1].copy()], "mirror")
    done = threading.Event()
    eng.subscribe_frames(lambda pkt: done.set() if eng.metrics.counter("detect.runs") >= 6 else None)
    eng.start(ImageSource(astronaut, fps=120, frames=None), ["null"], detector_async=False)
    try:
        assert done.wait(120)
        g = eng.snapshot()["gauges"]
        assert g["detect.stable_tracks"] == 1  # the same face, confidently detected again and again
        assert g["detect.interval_target"] == 10
    finally:
        eng.stop()


def test_a_large_face_is_followed_as_closely_at_half_size(astronaut):
    """A face of 120 px or more is tracked on the half-size region: the motion still comes out in
    full-size pixels, as closely as a small face's."""
    import cv2
    from tests_support import shifted

    from mirage_desktop.vision.detector import HaarFaceDetector
    from mirage_desktop.vision.tracking import HALF_SIZE_FROM

    big = cv2.resize(astronaut, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    (face,) = HaarFaceDetector().detect(big)
    assert min(face.bbox[2:] - face.bbox[:2]) >= HALF_SIZE_FROM
    tr = FaceTracker()
    tr.update([face], 0)
    tr.note_frame(big, 0)
    assert tr.tracks[0].prev_scale == 2
    for i in range(1, 6):
        tr.track(shifted(big, 5 * i, 3 * i), i)
    np.testing.assert_allclose(tr.faces()[0].kps - face.kps, np.tile([25, 15], (5, 1)), atol=1.5)


def _hold_run(astronaut, hold: int, script: list) -> list:
    """Frames of a still photo through the tracker in the pipeline's order (flow, then the
    detection's result); ``script[i]``: None (no detection on frame i), True (the face found) or
    False (a detection that missed it). Returns the track ids present on each frame."""
    from mirage_desktop.vision.detector import HaarFaceDetector

    (face,) = HaarFaceDetector().detect(astronaut)
    tr = FaceTracker(hold_frames=hold)
    present = []
    for i, found in enumerate(script):
        tr.track(astronaut, i)
        if found is not None:
            tr.update([Face(face.bbox.copy(), face.kps.copy(), 0.6)] if found else [], i)
            tr.note_frame(astronaut, i)
        present.append([f.track_id for f in tr.faces()])
    return present


# detected on frame 0, missed by the detections on frames 1, 2 and 4 (none runs on 3), found on 5
WOBBLE = [True, False, False, None, False, True, None, True]


def test_a_face_missed_for_a_few_frames_is_held_on_its_track(astronaut):
    present = _hold_run(astronaut, 6, WOBBLE)
    assert all(len(ids) == 1 for ids in present), present  # on every frame: no flash
    assert len({ids[0] for ids in present}) == 1  # the same track all along


def test_without_a_hold_the_missed_face_flashes_off(astronaut):
    present = _hold_run(astronaut, 0, WOBBLE)
    assert present[0] and present[5] and not all(present[1:5])  # gone in the gap
    assert present[0] != present[5]  # and back as another track


def test_a_face_gone_for_good_is_dropped_after_the_hold(astronaut):
    present = _hold_run(astronaut, 6, [True] + [False] * 9)
    # missed from frame 1 on: held while fewer than 6 frames have passed since frame 0
    assert [bool(ids) for ids in present] == [True] * 6 + [False] * 4


def test_the_hold_follows_the_live_setting(astronaut):
    from mirage_desktop.config import Settings
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.vision.capture import ImageSource
    from mirage_desktop.vision.pipeline import VideoPipeline

    p = VideoPipeline(Settings(track_hold_frames=9), Metrics(), ImageSource(astronaut), [])
    assert p.tracker.hold_frames == 9
    p.set_option("track_hold_frames", 2)
    assert p.tracker.hold_frames == 2 and p.opts.track_hold_frames == 2


def _hold_clip(astronaut, tmp_path, hold: int):
    """A still face the detector misses on frames 8-10 (its marker channel dimmed below the
    marker detector's threshold, the face itself unchanged), run through the real pipeline frame
    by frame (lossless: every frame, the detector inline, at interval 1: every other frame once the
    face is stable, every frame once it is missed, so 8, 9 and 10 are three missed detections).
    Returns the output packets."""
    from tests_support import HANG_GUARD_S, CallbackSink, Frames, marker_face

    from mirage_desktop.config import Settings
    from mirage_desktop.engine import Engine
    from mirage_desktop.testing import face_models as synthetic

    face = marker_face(astronaut, (160, 50, 285, 175), 2)
    seen, missed = np.full((360, 480, 3), 20, np.uint8), np.full((360, 480, 3), 20, np.uint8)
    seen[100:230, 150:280] = face
    dim = face.copy()
    dim[..., 2] = 170  # below the marker's threshold: no face found there, for a few frames
    missed[100:230, 150:280] = dim
    frames = [missed if 8 <= i <= 10 else seen for i in range(16)]

    class Clip:
        kind, name, fps, size = "file", "clip", 30.0, (480, 360)

        def __init__(self):
            self.n = 0

        def read(self):
            self.n += 1
            return frames[self.n - 1].copy() if self.n <= len(frames) else None

        def close(self):
            pass

    paths = synthetic.build_model_set(tmp_path / "models", [], 640)
    paths["det_10g"] = synthetic.build_marker_scrfd(tmp_path / "marker.onnx")
    eng = Engine(Settings(track_hold_frames=hold, detect_interval=1, enable_ai_mark=False), model_overrides=paths)
    eng.load_models()
    eng.set_source_photos([astronaut], "astronaut")
    got = Frames(eng)
    eng.start(Clip(), [CallbackSink(lambda f: None)], lossless=True)
    try:
        assert eng.wait(HANG_GUARD_S)
    finally:
        eng.stop()
    out = got.since(got.created)
    assert len(out) == len(frames)
    return out


def test_a_face_the_detector_misses_for_a_few_frames_stays_swapped_in_the_pipeline(astronaut, tmp_path):
    out = _hold_clip(astronaut, tmp_path, 6)
    assert [p.swapped for p in out] == [1] * len(out)  # no flash
    assert len({p.faces[0].track_id for p in out}) == 1  # one track all along
    off = _hold_clip(astronaut, tmp_path, 0)
    assert [p.swapped for p in off[:8]] == [1] * 8 and not all(p.swapped for p in off[8:11])  # the flash
    assert off[-1].swapped and off[-1].faces[0].track_id != off[0].faces[0].track_id  # back as another track
