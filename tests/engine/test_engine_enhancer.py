"""The enhancer inside the live engine: its own metric stage, background mode, pass-through."""

from __future__ import annotations

import time

import numpy as np

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.models import synthetic
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


def _run(eng, astronaut, seconds=1.5):
    frames = []
    token = eng.subscribe_frames(lambda p: frames.append(p))
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])
    time.sleep(seconds)
    eng.stop()
    eng.unsubscribe_frames(token)
    return frames


def test_enhancer_runs_as_its_own_stage_every_third_frame(model_factory, astronaut, tmp_path):
    eng = _engine(model_factory, astronaut, tmp_path, enhancer_interval=3, enhancer_async=False)
    assert eng.status().enhancer == "gfpgan"
    frames = _run(eng, astronaut)
    snap = eng.snapshot()
    runs, reused = snap["counters"]["enhance.runs"], snap["counters"]["enhance.reused"]
    assert snap["stages"]["enhance"]["count"] > 10 and snap["stages"]["enhance.model"]["count"] == runs
    assert 1.5 <= reused / runs <= 2.5  # two re-uses per model run
    # the enhancer (0.5 x signal) flattened the face towards mid-grey compared with the swap alone
    eng.set_option("enable_enhancer", False)
    plain = _run(eng, astronaut, 0.8)
    cy, cx = 115, 223
    face_enh = frames[-1].frame[cy - 10:cy + 10, cx - 10:cx + 10].astype(int)
    face_plain = plain[-1].frame[cy - 10:cy + 10, cx - 10:cx + 10].astype(int)
    assert np.abs(face_enh - 127).mean() < np.abs(face_plain - 127).mean()


def test_background_enhancer_keeps_the_stream_going(model_factory, astronaut, tmp_path):
    eng = _engine(model_factory, astronaut, tmp_path, enhancer_async=True)
    _run(eng, astronaut)
    snap = eng.snapshot()
    assert snap["counters"]["enhance.runs"] >= 1
    assert snap["counters"].get("frames.out", 0) >= 20


def test_missing_enhancer_model_is_a_reason_not_a_crash(model_factory, astronaut):
    eng = Engine(Settings(enable_enhancer=True, enhancer="codeformer"), model_overrides=model_factory(astronaut))
    st = eng.load_models()
    assert st.enhancer == "none"
    assert any(p.startswith("enhancer:") and "mirage models download" in p for p in st.problems)
    eng.set_source_photos([astronaut], "self")
    frames = _run(eng, astronaut, 0.8)
    assert frames and frames[-1].swapped == 1  # the swap still runs
