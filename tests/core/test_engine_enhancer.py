"""The enhancer inside the live engine: its own metric stage, background mode, pass-through.

No test here waits for time to pass: each waits for the frames or counters it needs, or holds
the model itself (``Gate``); timeouts are hang guards only."""

from __future__ import annotations

import numpy as np
from tests_support import Frames, Gate, now, wait_counter

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.outputs.sinks import NullSink
from mirage_desktop.vision.capture import ImageSource


def _engine(model_factory, astronaut, tmp_path, **settings):
    paths = dict(model_factory(astronaut))
    paths["gfpgan_1_4"] = synthetic.build_gfpgan(tmp_path / "gfpgan_1_4.onnx")
    eng = Engine(Settings(enable_enhancer=True, enhancer="gfpgan", enable_ai_mark=False, **settings),
                 model_overrides=paths)
    eng.load_models()
    eng.set_source_photos([astronaut], "self")
    return eng


def _first_swapped(eng, astronaut):
    """Run until the first frame on which a face was swapped; return that frame."""
    frames = Frames(eng)
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])
    try:
        return frames.first(lambda p: p.faces)
    finally:
        frames.close()
        eng.stop()


def test_enhancer_runs_as_its_own_stage_every_third_frame(model_factory, astronaut, tmp_path):
    eng = _engine(model_factory, astronaut, tmp_path, enhancer_interval=3, enhancer_async=False)
    assert eng.status().enhancer == "gfpgan"
    frames = Frames(eng)
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])
    try:
        wait_counter(eng.metrics, "enhance.runs", 5)  # five model runs: at least 13 enhanced frames
        enhanced = frames.after(now(), 1, where=lambda p: p.faces)  # a frame made with the enhancer on
    finally:
        frames.close()
        eng.stop()
    snap = eng.snapshot()
    runs, reused = snap["counters"]["enhance.runs"], snap["counters"]["enhance.reused"]
    assert snap["stages"]["enhance"]["count"] > 10 and snap["stages"]["enhance.model"]["count"] == runs
    assert snap["stages"]["enhance"]["count"] == runs + reused  # every enhanced frame: a run or a re-use
    assert 1.5 <= reused / runs <= 2.5  # two re-uses per model run
    # the enhancer (0.5 x signal) flattened the face towards mid-grey compared with the swap alone
    eng.set_option("enable_enhancer", False)
    plain = _first_swapped(eng, astronaut)
    assert enhanced.swapped == 1 and plain.swapped == 1
    cy, cx = 115, 223
    face_enh = enhanced.frame[cy - 10:cy + 10, cx - 10:cx + 10].astype(int)
    face_plain = plain.frame[cy - 10:cy + 10, cx - 10:cx + 10].astype(int)
    assert np.abs(face_enh - 127).mean() < np.abs(face_plain - 127).mean()


def test_background_enhancer_keeps_the_stream_going(model_factory, astronaut, tmp_path):
    """While the background model is held (as by a very slow enhancer), frames keep coming out,
    swapped and not yet enhanced; once its result is in, frames get it."""
    eng = _engine(model_factory, astronaut, tmp_path, enhancer_async=True)
    gate = Gate()
    enhancer = eng.enhance_stage.enhancer
    real = enhancer.enhance

    def held(crop):
        gate.enter()  # returns at once after the test opens the gate
        return real(crop)

    enhancer.enhance = held
    m = eng.metrics
    frames = Frames(eng)
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])
    try:
        gate.wait_reached()  # the model is busy on its own thread
        busy = now()
        frames.after(busy, 20)  # twenty frames captured since then came out
        made = frames.since(busy)
        assert m.counter("enhance.runs") == 0  # all while the model was still held
        assert m.counter("enhance.reused") == 0  # nothing pasted before the first result
        assert all(p.swapped == 1 for p in made)  # the swap ran on every one of them
    finally:
        gate.open()
    try:
        wait_counter(m, "enhance.reused", 1)  # the result is pasted on the frames that follow
    finally:
        frames.close()
        eng.stop()
    assert m.counter("enhance.runs") >= 1 and m.counter("errors.enhance_model") == 0


def test_missing_enhancer_model_is_a_reason_not_a_crash(model_factory, astronaut):
    eng = Engine(Settings(enable_enhancer=True, enhancer="codeformer"), model_overrides=model_factory(astronaut))
    st = eng.load_models()
    assert st.enhancer == "none"
    assert any(p.startswith("enhancer:") and "mirage models download" in p for p in st.problems)
    eng.set_source_photos([astronaut], "self")
    assert _first_swapped(eng, astronaut).swapped == 1  # the swap still runs
