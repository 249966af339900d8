"""The brief's instant rollback: every MIRAGE_ENABLE_* flag switches live through the engine API, and
with all of them off the output is exactly the input, pixel for pixel."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from mirage_desktop import config
from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.vision.capture import ImageSource

FLAGS = sorted(f.name for f in dataclasses.fields(Settings) if f.name.startswith("enable_"))
DEADLINE_S = 120  # a guard against a hang only; nothing asserts on time


class Frames:
    """Frames as they leave the engine, with the input they came from; wait for ones made later."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.cond = threading.Condition()
        self.pkts: list = []
        self.token = engine.subscribe_frames(self._got, want_original=True)

    def _got(self, pkt) -> None:
        with self.cond:
            self.pkts.append((pkt.index, pkt.frame.copy(), pkt.original, pkt.swapped))
            self.cond.notify_all()

    def first(self, pred=lambda p: True, n: int = 1):
        """The first frame *captured after now* (so made under the options set before this call)
        for which ``pred(index, frame, original, swapped)`` holds; ``n``: the n-th such frame."""
        start = self.engine.metrics.counter("frames.in")  # the index the next captured frame gets
        with self.cond:
            def found():
                hits = [p for p in self.pkts if p[0] >= start and pred(p)]
                return hits[n - 1] if len(hits) >= n else None

            assert self.cond.wait_for(found, DEADLINE_S), "no such frame came out"
            return found()[:3]

    def after(self, n: int = 1):
        return self.first(n=n)


@pytest.fixture
def engine(model_factory, astronaut, tmp_path):
    paths = model_factory(astronaut)
    paths["gfpgan_1_4"] = synthetic.build_gfpgan(tmp_path / "gfpgan_1_4.onnx")
    eng = Engine(Settings(enhancer="gfpgan", enhancer_async=False), model_overrides=paths)
    eng.load_models()
    eng.set_source_photos([astronaut[:, ::-1].copy()], "mirror")
    yield eng
    eng.stop()


def test_the_flags_are_the_settings_the_brief_names():
    env = {f"MIRAGE_{f.upper()}" for f in FLAGS}
    assert {"MIRAGE_ENABLE_SWAP", "MIRAGE_ENABLE_ENHANCER", "MIRAGE_ENABLE_SCRFD", "MIRAGE_ENABLE_AI_MARK",
            "MIRAGE_ENABLE_MOUTH_MASK", "MIRAGE_ENABLE_VOICE"} <= env


def test_all_flags_off_live_is_exact_pass_through_and_on_again_swaps(engine, astronaut):
    engine.start(ImageSource(astronaut, fps=60), ["null"])
    frames = Frames(engine)
    _, out, orig = frames.after()
    assert not np.array_equal(out, orig)  # swapping, with the AI mark
    for name in FLAGS:  # every flag off, one by one, live
        engine.set_option(name, False)
    for k in (1, 2, 3):  # several frames in a row: exactly the camera's pixels
        _, out, orig = frames.after(k)
        np.testing.assert_array_equal(out, orig)
    assert "face swap is switched off" in engine.status().passthrough
    for name in ("enable_scrfd", "enable_swap"):
        engine.set_option(name, True)
    _, out, orig = frames.first(lambda p: p[3] > 0)  # once the detector has found the face again
    assert not np.array_equal(out, orig)  # back on: swapping again, no restart


@pytest.mark.parametrize("off", FLAGS)
def test_each_flag_alone_switches_live(engine, astronaut, off):
    """Each flag is accepted live; switching one off changes only what it owns (the AI mark stays)."""
    engine.start(ImageSource(astronaut, fps=60), ["null"])
    frames = Frames(engine)
    frames.after()
    engine.set_option(off, False)
    assert getattr(engine.settings, off) is False
    assert getattr(engine.pipeline.opts, off) is False  # the running stream sees it
    _, out, orig = frames.after()
    if off != "enable_ai_mark":
        assert not np.array_equal(out, orig)


def test_scrfd_off_passes_faces_through_and_says_why(engine, astronaut):
    engine.start(ImageSource(astronaut, fps=60), ["null"])
    frames = Frames(engine)
    engine.set_option("enable_ai_mark", False)
    engine.set_option("enable_scrfd", False)
    _, out, orig = frames.after()
    np.testing.assert_array_equal(out, orig)
    assert any("MIRAGE_ENABLE_SCRFD=0" in r for r in engine.status().passthrough)


def test_all_flags_off_from_the_environment_is_exact_pass_through(model_factory, astronaut, monkeypatch):
    environ = {f"MIRAGE_{f.upper()}": "0" for f in FLAGS}
    settings = config.load(path=None, environ=environ).settings
    assert not any(getattr(settings, f) for f in FLAGS)
    eng = Engine(settings, model_overrides=model_factory(astronaut))
    eng.load_models()
    eng.set_source_photos([astronaut[:, ::-1].copy()], "mirror")
    try:
        eng.start(ImageSource(astronaut, fps=60), ["null"])
        frames = Frames(eng)
        for k in (1, 2, 3):
            _, out, orig = frames.after(k)
            np.testing.assert_array_equal(out, orig)
    finally:
        eng.stop()
