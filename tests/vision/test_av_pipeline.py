"""The live pipeline on one clock with the voice, and the degrade ladder acting on it.

No wall-clock bounds: the delay buffer's promise is a lower bound (a frame never leaves before
its capture time + the voice latency), and the ladder is driven by a stage that sleeps longer
than the frame budget, so it is over budget whatever the machine does. Waits are on frames and
counters, with the suite's hang guard."""

from __future__ import annotations

import time

import pytest
from tests_support import Frames, now, wait_counter

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.outputs.sinks import NullSink
from mirage_desktop.vision.capture import ImageSource


@pytest.fixture
def engine(model_factory, astronaut):
    eng = Engine(Settings(lipsync_mic=False), model_overrides=model_factory(astronaut))
    eng.load_models()
    eng.set_source_photos([astronaut[:, ::-1].copy()], "mirror")
    yield eng
    eng.stop()


class Arrivals:
    """Output time of every frame (on the output thread, after the sinks took it)."""

    def __init__(self, engine):
        self.t: dict[int, float] = {}
        engine.subscribe_frames(lambda p: self.t.__setitem__(id(p), time.perf_counter()))


def test_video_leaves_at_capture_plus_the_voice_latency_and_the_trim(engine, astronaut):
    arr = Arrivals(engine)
    frames = Frames(engine)
    engine.start(ImageSource(astronaut, fps=30), [NullSink()])
    p = engine.pipeline
    p.audio_latency = lambda: 0.120  # a voice path that measures 120 ms, appearing mid-stream:
    frames.after(now(), 40)  # eased in at 4 ms a frame (30 frames), not a 120 ms freeze
    mark = now()
    frames.after(mark, 10)
    held = frames.since(mark)
    assert all(arr.t[id(f)] - f.t_capture >= 0.120 for f in held)
    off = engine.metrics.histogram("av.offset_ms").summary()
    assert off["count"] >= 10
    engine.set_option("av_trim_ms", 80)
    mark = now()
    frames.after(mark, 40)
    later = frames.since(mark)[-10:]  # the hold moves there smoothly (4 ms a frame)
    assert all(arr.t[id(f)] - f.t_capture >= 0.200 for f in later)
    assert engine.metrics.gauge("av.delay_ms") == pytest.approx(200.0)
    # no voice path: frames leave as they come again
    p.audio_latency = None
    mark = now()
    frames.after(mark, 5)
    assert engine.metrics.gauge("av.delay_ms") == 0.0


class SleepStage:
    """Takes longer than a 30 FPS frame budget, and records the size it was given."""

    name = "slow"

    def __init__(self, seconds):
        self.seconds, self.shapes = seconds, []

    def wants(self, opts):
        return True

    def process(self, ctx):
        self.shapes.append(ctx.frame.shape)
        time.sleep(self.seconds)  # the load itself (a lower bound on the frame's cost)

    def reset(self):
        pass

    def close(self):
        pass


def test_under_load_the_ladder_steps_down_and_pinning_restores_the_settings(engine, astronaut):
    engine.start(ImageSource(astronaut, fps=30), [NullSink()])
    p = engine.pipeline
    slow = SleepStage(0.060)  # 1.8x the 33 ms budget at any machine speed
    p.stages = [p.stages[0], slow, *p.stages[1:]]
    wait_counter(engine.metrics, "adapt.down", 2)
    # the test detector runs at one size only, so no detection steps: the frame rate goes first
    assert [(s.kind, s.value) for s in p.ladder.steps[:2]] == [("fps", 24.0), ("fps", 20.0)]
    level = p.ladder.level
    assert level >= 2 and engine.metrics.gauge("adapt.level") >= 2
    issues = [i for i in engine.status().issues if i["source"] == "adapt"]
    assert issues and issues[0]["level"] == "warning" and "FPS" in issues[0]["message"]
    assert engine.snapshot()["health"]["level"] in ("yellow", "red")
    with p._adapt_lock:  # the worker's frame-rate cap is the ladder's (20 FPS or lower by now)
        assert p._rate.fps == p.ladder.overrides()["fps"] <= 20.0
    engine.set_option("adapt_video", False)  # pinned: back to exactly what the user chose
    assert p.ladder.level == 0 and p._fps_cap == 0
    assert not [i for i in engine.status().issues if i["source"] == "adapt"]
    downs = engine.metrics.counter("adapt.down")
    mark = now()
    frames = Frames(engine)
    frames.after(mark, 40)  # over budget all along, pinned: no further step
    assert engine.metrics.counter("adapt.down") == downs and p.ladder.level == 0


def test_the_lowest_steps_lower_the_frame_rate_and_the_processing_size(engine, astronaut):
    engine.start(ImageSource(astronaut, fps=30), [NullSink()])
    p = engine.pipeline
    rec = SleepStage(0.0)
    p.stages = [p.stages[0], rec, *p.stages[1:]]
    kinds = [(s.kind, s.value) for s in p.ladder.steps]
    assert ("scale", 384) in kinds and ("fps", 15.0) in kinds
    with p._adapt_lock:
        p.ladder.enabled = False  # hold the level the test sets (the load here is light)
        p.ladder.level = kinds.index(("scale", 384)) + 1
        p._apply_adapt()
    frames = Frames(engine)
    mark = now()
    dropped = engine.metrics.counter("dropped.adapt_fps")
    out = frames.after(mark, 5)
    assert out.frame.shape == astronaut.shape  # the virtual camera keeps its size
    n = len(rec.shapes)
    frames.after(out.t_capture, 3)
    assert rec.shapes[n:] and all(min(s[:2]) == 384 for s in rec.shapes[n:])
    assert engine.metrics.counter("dropped.adapt_fps") > dropped  # 15 of 30 FPS


class SizableDetector:
    fixed_size = None

    def __init__(self):
        self.det_size = 640

    def set_det_size(self, size):
        self.det_size = size


class Analyzer:
    recognizer = None

    def __init__(self):
        self.detector = SizableDetector()


class Interval:
    def __init__(self):
        self.interval = 1

    def set_interval(self, k):
        self.interval = k


def test_quality_steps_reach_the_detector_and_the_enhancer_not_the_settings(astronaut):
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.vision.pipeline import VideoPipeline

    s = Settings(enable_enhancer=True, enhancer_interval=2)
    enh = Interval()
    p = VideoPipeline(s, Metrics(), ImageSource(astronaut, fps=30), [NullSink()], analyzer=Analyzer(),
                      enhance_stage=enh)
    kinds = [(st.kind, st.value) for st in p.ladder.steps]
    assert kinds[:5] == [("enhancer", 2), ("enhancer", 4), ("enhancer", 0), ("det_size", 480), ("det_size", 320)]
    seen = []
    for level in range(1, 6):
        p.ladder.level = level
        p._apply_adapt()
        seen.append((enh.interval, p._stage_opts.enable_enhancer, p.analyzer.detector.det_size))
    assert seen == [(4, True, 640), (8, True, 640), (2, False, 640), (2, False, 480), (2, False, 320)]
    assert p.opts == s  # never written into the user's settings
    p.ladder.level = 0  # restored
    p._apply_adapt()
    assert (enh.interval, p._stage_opts.enable_enhancer, p.analyzer.detector.det_size) == (2, True, 640)
    p.set_option("det_size", 480)  # the user chooses anew: a new ladder from their settings
    assert [(st.kind, st.value) for st in p.ladder.steps if st.kind == "det_size"] == [("det_size", 320)]
