"""EnhanceStage(background=True): a slow enhancer never holds up the frame."""

from __future__ import annotations

import threading
import time

import numpy as np

from mirage_desktop.metrics import Metrics
from mirage_desktop.vision.enhancer import EnhanceStage, face_box
from test_enhance_stage_region import GREEN, SolidEnhancer, make_face, make_frame


class SlowSolid(SolidEnhancer):
    def __init__(self, size=128, delay=0.3):
        super().__init__(size)
        self.delay = delay
        self.release = threading.Event()

    def enhance(self, crop):
        self.release.wait(5)
        return super().enhance(crop)


def test_background_enhancer_does_not_block_and_result_follows_the_face():
    enh = SlowSolid()
    m = Metrics()
    stage = EnhanceStage(enh, interval=1, metrics=m, background=True)
    try:
        face = make_face(160, 120)
        frame = make_frame()
        before = frame.copy()
        t = time.perf_counter()
        stage.process(frame, [face])  # the model is busy (blocked) on its thread
        assert time.perf_counter() - t < 0.2
        assert np.array_equal(frame, before)  # nothing enhanced yet: the face is left as it is
        enh.release.set()
        deadline = time.time() + 5
        while m.counter("enhance.runs") < 1 and time.time() < deadline:
            time.sleep(0.01)
        moved = make_face(180, 130)  # the face moved: the cached result is pasted where it is now
        frame2 = make_frame(seed=1)
        ref = frame2.copy()
        stage.process(frame2, [moved])
        x0, y0, x1, y1 = face_box(moved, frame2.shape)
        cx, cy = int(moved.kps[2, 0]), int(moved.kps[2, 1])
        assert (frame2[cy, cx] == GREEN).all()
        changed = np.any(frame2 != ref, axis=2)
        changed[y0:y1, x0:x1] = False
        assert not changed.any()  # only the face box was touched
    finally:
        stage.close()


def test_reset_drops_results_still_being_made():
    enh = SlowSolid()
    m = Metrics()
    stage = EnhanceStage(enh, interval=1, metrics=m, background=True)
    try:
        face = make_face(160, 120)
        stage.process(make_frame(), [face])  # a result for the old identity is being made
        stage.reset()  # identity switched / swap turned off
        enh.release.set()
        deadline = time.time() + 5
        while m.counter("enhance.runs") < 1 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        frame = make_frame(seed=2)
        before = frame.copy()
        enh.release.clear()  # hold the next run so the frame can only show a stale result
        stage.process(frame, [face])
        assert np.array_equal(frame, before)  # the out-of-date result was never pasted
    finally:
        enh.release.set()
        stage.close()
