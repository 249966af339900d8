"""The frame-stage contract and its one guard: timing, errors counted and cleared, reset when off."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.errors import MirageError
from mirage_desktop.metrics import Metrics
from mirage_desktop.vision.capture import ImageSource
from mirage_desktop.vision.stages import FrameContext, check_stage, run_stages

DEADLINE_S = 120


def _swapping_engine(model_factory, astronaut, **settings) -> Engine:
    """An engine with models that see the astronaut's face and a (mirrored) source face."""
    eng = Engine(Settings(**settings), model_overrides=model_factory(astronaut))
    eng.load_models()
    eng.set_source_photos([astronaut[:, ::-1].copy()], "mirror")
    return eng


class Flaky:
    """A stage that fails while ``failing`` is set; counts resets."""

    name = "flaky"

    def __init__(self):
        self.failing = threading.Event()
        self.on = True
        self.resets = 0
        self.runs = 0

    def wants(self, opts) -> bool:
        return self.on

    def process(self, ctx) -> None:
        self.runs += 1
        if self.failing.is_set():
            raise RuntimeError("flaky broke")

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        pass


@pytest.mark.parametrize("missing", ["name", "wants", "process", "reset", "close"])
def test_a_stage_missing_a_method_is_refused_with_a_clear_message(missing):
    class Partial:
        pass

    for a in {"name", "wants", "process", "reset", "close"} - {missing}:
        setattr(Partial, a, "x" if a == "name" else (lambda self, *a: None))
    with pytest.raises(MirageError) as e:
        check_stage(Partial())
    assert f"missing {missing}" in str(e.value) and "is not a frame stage" in str(e.value)


def test_a_stage_whose_method_is_not_callable_is_refused():
    class Bad(Flaky):
        process = 3

    with pytest.raises(MirageError, match="process not callable"):
        check_stage(Bad())


def test_the_guard_times_counts_clears_and_resets():
    m = Metrics()
    st = Flaky()
    seen: list = []
    wanted: dict = {}
    ctx = FrameContext(np.zeros((4, 4, 3), np.uint8), opts=Settings())
    run_stages([st], ctx, m, lambda n, e: seen.append((n, e)), wanted)
    assert seen == [("flaky", None)] and m.snapshot()["stages"]["flaky"]["count"] == 1
    st.failing.set()
    run_stages([st], ctx, m, lambda n, e: seen.append((n, e)), wanted)
    assert seen[-1][0] == "flaky" and isinstance(seen[-1][1], RuntimeError)
    st.on = False
    run_stages([st], ctx, m, lambda n, e: seen.append((n, e)), wanted)
    assert st.resets == 1 and st.runs == 2  # switched off: reset once, not run
    run_stages([st], ctx, m, lambda n, e: seen.append((n, e)), wanted)
    assert st.resets == 1


def test_a_failing_stage_shows_in_the_status_and_clears_when_it_recovers(model_factory, astronaut):
    eng = _swapping_engine(model_factory, astronaut)
    cond = threading.Condition()
    outs: list = []

    def got(pkt):
        with cond:
            outs.append(pkt.index)
            cond.notify_all()

    def frames_after(n=3):
        with cond:
            start = outs[-1] if outs else -1
            assert cond.wait_for(lambda: outs and outs[-1] >= start + n, DEADLINE_S)

    eng.subscribe_frames(got)
    eng.start(ImageSource(astronaut, fps=60), ["null"])
    try:
        flaky = Flaky()
        eng.pipeline.stages.insert(1, check_stage(flaky))  # between track and swap
        frames_after()
        assert not any("flaky" in p for p in eng.status().problems)
        flaky.failing.set()
        frames_after()
        assert "flaky: flaky broke" in eng.status().problems
        issue = [i for i in eng.status().issues if i["source"] == "flaky"]
        assert issue == [{"source": "flaky", "level": "error", "message": "flaky broke", "fix": ""}]
        assert eng.snapshot()["health"]["level"] == "red"
        assert eng.metrics.counter("errors.flaky") > 0
        assert eng.metrics.counter("faces.swapped") > 0  # the other stages kept working
        flaky.failing.clear()
        frames_after()
        assert not any("flaky" in p for p in eng.status().problems)  # recovered: no longer listed
        health = eng.snapshot()["health"]  # (yellow would be the machine's speed, not the stage)
        assert health["level"] != "red" and not any("flaky" in r for r in health["reasons"])
    finally:
        eng.stop()


def test_mirage_swap_runs_the_pipelines_stages(model_factory, astronaut):
    """The still path is the live list with a one-shot face stage: same swap, enhance and mark."""
    eng = _swapping_engine(model_factory, astronaut)
    img = astronaut.copy()
    res = eng.process_still(img)
    assert res.found == 1 and res.swapped == 1
    assert not np.array_equal(img, astronaut)
    eng.set_option("enable_swap", False)
    eng.set_option("enable_ai_mark", False)
    img2 = astronaut.copy()
    assert eng.process_still(img2).swapped == 0
    np.testing.assert_array_equal(img2, astronaut)  # every stage off: nothing touched


def test_sources_and_sinks_are_checked_against_their_contracts(model_factory, astronaut):
    eng = Engine(Settings(), model_overrides=model_factory(astronaut))

    class NoRead:
        name = "x"

        def close(self):
            pass

    class NoSend:
        name = "y"

        def open(self, w, h, fps):
            pass

        def close(self):
            pass

        def describe(self):
            return "y"

    from mirage_desktop.errors import DeviceError

    with pytest.raises(DeviceError, match="NoRead is not a frame source .missing read"):
        eng.start(NoRead(), ["null"])
    with pytest.raises(MirageError, match="NoSend is not a frame sink .missing send"):
        eng.start(ImageSource(astronaut), [NoSend()])
    assert not eng.running


def test_models_loaded_while_running_are_handed_over_by_method_and_locked(model_factory, astronaut, tmp_path):
    """load_models() on a running engine: loading happens outside the lock, the hand-over inside it
    (through VideoPipeline.use_models, not attribute assignment), and the stream keeps swapping."""
    eng = _swapping_engine(model_factory, astronaut)
    eng.start(ImageSource(astronaut, fps=60), ["null"])
    try:
        handed = []
        real = eng.pipeline.use_models
        eng.pipeline.use_models = lambda *a: (handed.append(eng._lock._is_owned()), real(*a))
        old_swapper = eng.swapper
        eng.load_models()
        assert handed == [True]  # under the engine's lock
        assert eng.pipeline.swapper is eng.swapper is not old_swapper
        n = eng.metrics.counter("faces.swapped")
        assert eng.metrics.wait_for("faces.swapped", n + 3, DEADLINE_S)  # new models, still swapping
    finally:
        eng.stop()


def _other_value(name):
    from mirage_desktop import config

    r, default = config.rule(name), getattr(Settings(), name)
    if r.kind == "bool":
        return not default
    if r.choices:
        return next(c for c in r.choices if c != default)
    if r.kind in ("int", "float"):
        return type(default)(r.hi if default != r.hi else r.lo)
    if r.kind == "regions":
        return "skin" if default != "skin" else "skin,nose"
    raise AssertionError(f"no test value for {name}")


@pytest.mark.parametrize("name", __import__("mirage_desktop.config", fromlist=["LIVE"]).LIVE)
def test_every_live_option_reaches_the_running_stream_without_a_restart(model_factory, astronaut, name):
    """The option table says which options are live; each one set on a running engine is in the
    stream's options for the next frame, and the stream is the same one."""
    eng = Engine(Settings(), model_overrides=model_factory(astronaut))
    eng.start(ImageSource(astronaut, fps=60), ["null"])
    try:
        p = eng.pipeline
        value = _other_value(name)
        eng.set_option(name, value)
        assert getattr(eng.settings, name) == value and getattr(p.opts, name) == value
        assert eng.pipeline is p
    finally:
        eng.stop()


def test_a_pixel_boost_chosen_live_reaches_the_swap_and_the_ladder(model_factory, astronaut):
    """The running stream swaps at the new size from the next frames on (``swap.boost``: model
    runs a face), and its degrade ladder now starts by stepping the boost down. (Adaptation off: on a
    busy machine the ladder itself could step the boost back down during the test.)"""
    eng = _swapping_engine(model_factory, astronaut, adapt_video=False)
    eng.start(ImageSource(astronaut, fps=60), ["null"])
    try:
        assert eng.metrics.wait_for("faces.swapped", 2, DEADLINE_S)
        assert eng.metrics.gauge("swap.boost") == 1
        eng.set_option("pixel_boost", 256)
        # frames still in the hand-offs were made at 128: wait past them
        assert eng.metrics.wait_for("faces.swapped", eng.metrics.counter("faces.swapped") + 10, DEADLINE_S)
        assert eng.metrics.gauge("swap.boost") == 4
        eng.set_option("adapt_video", True)  # the ladder is built whether or not it may act
        assert eng.pipeline.ladder.steps[0].kind == "boost" and eng.pipeline.ladder.steps[0].value == 128
    finally:
        eng.stop()


def test_an_option_that_is_not_live_waits_for_the_next_start(model_factory, astronaut):
    eng = Engine(Settings(), model_overrides=model_factory(astronaut))
    eng.start(ImageSource(astronaut, fps=60), ["null"])
    try:
        eng.set_option("capture_fps", 15)
        assert eng.settings.capture_fps == 15 and eng.pipeline.opts.capture_fps == 30  # stored, not applied
    finally:
        eng.stop()


def test_an_error_of_a_stage_that_stops_running_is_not_shown_any_more(model_factory, astronaut):
    """A swap that failed, then face swap switched off: the old failure must not stay red."""
    eng = _swapping_engine(model_factory, astronaut)
    eng.start(ImageSource(astronaut, fps=60), ["null"])
    try:
        broken = threading.Event()
        real = eng.swapper.swap

        def swap(*a, **k):
            if broken.is_set():
                raise RuntimeError("swap broke")
            return real(*a, **k)

        eng.swapper.swap = swap
        broken.set()
        n = eng.metrics.counter("errors.swap")
        assert eng.metrics.wait_for("errors.swap", n + 2, DEADLINE_S)
        assert "swap: swap broke" in eng.status().problems
        eng.set_option("enable_swap", False)
        m = eng.metrics.counter("frames.in")
        assert eng.metrics.wait_for("frames.out", eng.metrics.counter("frames.out") + 3, DEADLINE_S)
        assert eng.metrics.wait_for("frames.in", m + 3, DEADLINE_S)
        assert eng.metrics.wait_for("frames.out", eng.metrics.counter("frames.out") + 3, DEADLINE_S)
        assert not any("swap broke" in p for p in eng.status().problems)
    finally:
        eng.stop()


def test_a_detector_error_clears_when_it_works_again(model_factory, astronaut):
    eng = Engine(Settings(detect_interval=1), model_overrides=model_factory(astronaut))
    eng.load_models()
    eng.start(ImageSource(astronaut, fps=60), ["null"])
    try:
        det = eng.analyzer.detector
        real = det.detect_prepared
        broken = threading.Event()
        broken.set()

        def detect(*a, **k):
            if broken.is_set():
                raise RuntimeError("CUDA out of memory")
            return real(*a, **k)

        det.detect_prepared = detect
        assert eng.metrics.wait_for("errors.detect", 1, DEADLINE_S)
        assert any("CUDA out of memory" in p for p in eng.status().problems)
        broken.clear()
        runs = eng.metrics.counter("detect.runs")
        assert eng.metrics.wait_for("detect.runs", runs + 2, DEADLINE_S)
        assert not any("CUDA out of memory" in p for p in eng.status().problems)
    finally:
        eng.stop()


def test_a_live_value_the_voice_refuses_leaves_the_settings_as_they_were(model_factory, astronaut):
    eng = Engine(Settings(), model_overrides=model_factory(astronaut))

    class Voice:
        def set_option(self, name, value):
            raise MirageError("no such voice option value")

        def stop(self):
            pass

    eng.voice, eng.voice_mode = Voice(), "convert"  # the voice changer (a lip-sync mic has no pitch)
    with pytest.raises(MirageError):
        eng.set_option("voice_pitch", 5)
    assert eng.settings.voice_pitch == 0.0  # not half-applied
    eng.voice = None


def test_a_replaced_enhancer_starts_no_thread_again(tmp_path, astronaut):
    """The engine hands the new enhancer over first and retires the old one: a frame still inside the
    old one finishes, but it can no longer start a background thread that nothing would stop."""
    from mirage_desktop.testing import face_models
    from mirage_desktop.vision.detector import HaarFaceDetector
    from mirage_desktop.vision.enhancer import EnhanceStage, GFPGANEnhancer

    stage = EnhanceStage(GFPGANEnhancer(face_models.build_gfpgan(tmp_path / "g.onnx")), background=True)
    face = HaarFaceDetector().detect(astronaut)[0]
    face.track_id = 1
    stage.retire()
    stage.process(astronaut.copy(), [face])
    assert not stage._worker.running
