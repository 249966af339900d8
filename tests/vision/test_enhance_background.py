"""EnhanceStage(background=True): a slow enhancer never holds up the frame.

The slow model is one the test holds on an Event: "did not block" means process() returned
while the model was provably still inside its call, not that it returned quickly."""

from __future__ import annotations

import threading

import numpy as np
from test_enhance_stage_region import GREEN, SolidEnhancer, make_face, make_frame

from mirage_desktop.metrics import Metrics
from mirage_desktop.vision.enhancer import EnhanceStage, paste_region

HANG_GUARD_S = 120.0  # only stops a broken build from hanging the suite; nothing asserts on time


class SlowSolid(SolidEnhancer):
    """A model that stays inside ``enhance`` until the test sets ``release``; counts the calls
    it started and the ones it finished."""

    def __init__(self, size=128):
        super().__init__(size)
        self.release = threading.Event()
        self.cond = threading.Condition()
        self.started = self.finished = 0

    def enhance(self, crop):
        with self.cond:
            self.started += 1
            self.cond.notify_all()
        self.release.wait(HANG_GUARD_S)  # (a stage that waited for the model gets here only then)
        out = super().enhance(crop)
        with self.cond:
            self.finished += 1
            self.cond.notify_all()
        return out

    def wait(self, started=0, finished=0):
        with self.cond:
            assert self.cond.wait_for(lambda: self.started >= started and self.finished >= finished,
                                      HANG_GUARD_S), (self.started, self.finished)


def test_background_enhancer_does_not_block_and_result_follows_the_face():
    enh = SlowSolid()
    m = Metrics()
    stage = EnhanceStage(enh, interval=1, metrics=m, background=True)
    try:
        face = make_face(160, 120)
        frame = make_frame()
        before = frame.copy()
        stage.process(frame, [face])  # hands the face to the model's thread and returns
        enh.wait(started=1)  # the model is inside its call, held by the test...
        assert enh.finished == 0  # ...and still is: process() did not wait for it
        assert np.array_equal(frame, before)  # nothing enhanced yet: the face is left as it is
        # a second face asked for now is taken by the model's thread only after it has stored the
        # first result, so "the second call started" means "the first result is in"
        stage.process(make_frame(seed=3), [make_face(100, 100, track_id=2)])
        enh.release.set()
        enh.wait(started=2, finished=2)
        assert m.counter("enhance.runs") == 2
        moved = make_face(180, 130)  # the face moved: the cached result is pasted where it is now
        frame2 = make_frame(seed=1)
        ref = frame2.copy()
        stage.process(frame2, [moved])
        (x0, y0, x1, y1), _ = paste_region(moved, frame2.shape)
        cx, cy = int(moved.kps[2, 0]), int(moved.kps[2, 1])
        assert (frame2[cy, cx] == GREEN).all()
        changed = np.any(frame2 != ref, axis=2)
        changed[y0:y1, x0:x1] = False
        assert not changed.any()  # only the face's region was touched
    finally:
        enh.release.set()
        stage.close()


def test_reset_drops_results_still_being_made():
    enh = SlowSolid()
    m = Metrics()
    stage = EnhanceStage(enh, interval=1, metrics=m, background=True)
    try:
        face = make_face(160, 120)
        stage.process(make_frame(), [face])  # a result for the old identity is being made
        enh.wait(started=1)
        stage.reset()  # identity switched / swap turned off
        stage.process(make_frame(seed=3), [make_face(100, 100, track_id=2)])  # queued behind it
        enh.release.set()
        enh.wait(started=2, finished=2)  # the old result was handled before the second call began
        assert m.counter("enhance.runs") == 2
        frame = make_frame(seed=2)
        before = frame.copy()
        enh.release.clear()  # hold the next run so the frame can only show a stale result
        stage.process(frame, [face])
        assert np.array_equal(frame, before)  # the out-of-date result was never pasted
    finally:
        enh.release.set()
        stage.close()


def test_a_reset_while_the_inline_model_runs_drops_its_result():
    """A reset (an identity switch from another thread) during an inline run: that result describes
    the old identity and must not be re-used on the frames after."""
    holder = {}

    class ResettingSolid(SolidEnhancer):
        def enhance(self, crop):
            holder["stage"].reset()  # as if the window switched identity right now
            return super().enhance(crop)

    stage = EnhanceStage(ResettingSolid(), interval=5, background=False)
    holder["stage"] = stage
    frame, face = make_frame(), make_face(160, 120)
    stage.process(frame, [face])
    assert (frame == GREEN).all(axis=2).any()  # pasted on its own frame
    assert not stage._cache  # but not kept for the frames after
