"""Typed problems: each source sets and clears its own; the banner colours by level, not wording."""

from __future__ import annotations

import threading

import pytest

from mirage_desktop.config import Settings
from mirage_desktop.control.health import verdict
from mirage_desktop.engine import Engine
from mirage_desktop.status import Problem, Problems
from mirage_desktop.vision.capture import ImageSource


def _snap(issues, running=False):
    return {"status": {"running": running, "issues": [i.to_dict() for i in issues]}, "stages": {}, "counters": {},
            "gauges": {}}


@pytest.mark.parametrize("level,colour", [("error", "red"), ("warning", "yellow"), ("info", "green")])
def test_the_level_decides_the_colour_whatever_the_words(level, colour):
    for words in ("failing badly", "camera gone", "all fine really", "enhancer: x"):
        v = verdict(_snap([Problem("anything", level, words)]))
        assert v["level"] == colour and any(words in r for r in v["reasons"])


def test_a_problem_needs_a_known_level():
    with pytest.raises(ValueError):
        Problem("x", "fatal", "no such level")


def test_each_source_sets_and_clears_its_own():
    b = Problems()
    b.set(Problem("enhancer", "warning", "a"))
    b.set(Problem("swapper", "error", "b"))
    b.set(Problem("enhancer", "warning", "c"))  # replaces its own entry
    assert [p.message for p in b.all()] == ["b", "c"]  # errors first
    b.clear("enhancer")
    assert [p.source for p in b.all()] == ["swapper"]


def test_switching_face_swap_off_is_not_an_error(model_factory, astronaut):
    eng = Engine(Settings(), model_overrides=model_factory(astronaut))
    eng.load_models()
    eng.set_source_photos([astronaut], "me")
    assert eng.snapshot()["health"]["level"] == "green"
    eng.set_option("enable_swap", False)
    v = eng.snapshot()["health"]
    assert v["level"] == "green"
    assert any("face swap is switched off" in r for r in v["reasons"])  # shown, not alarming


def test_the_built_in_fallback_detector_is_yellow(model_factory, astronaut):
    models = model_factory(astronaut)
    del models["det_10g"]
    eng = Engine(Settings(), model_overrides=models)
    st = eng.load_models()
    assert st.detector == "opencv-haar"
    eng.set_source_photos([astronaut], "me")
    v = eng.snapshot()["health"]
    assert v["level"] == "yellow" and any("OpenCV's built-in detector" in r for r in v["reasons"])


def test_a_missing_swapper_is_red_with_its_fix(model_factory, astronaut):
    models = model_factory(astronaut)
    del models["inswapper_128"], models["inswapper_128_fp16"]
    eng = Engine(Settings(), model_overrides=models)
    eng.load_models()
    v = eng.snapshot()["health"]
    assert v["level"] == "red" and any(r.startswith("pass-through:") and "mirage models download" in r
                                       for r in v["reasons"])


def test_an_enhancer_failing_on_every_frame_turns_the_banner_yellow_and_back(model_factory, astronaut, tmp_path):
    from mirage_desktop.testing import face_models as synthetic

    models = model_factory(astronaut)
    models["gfpgan_1_4"] = synthetic.build_gfpgan(tmp_path / "g.onnx")
    eng = Engine(Settings(enable_enhancer=True, enhancer="gfpgan", enhancer_async=False), model_overrides=models)
    eng.load_models()
    eng.set_source_photos([astronaut[:, ::-1].copy()], "mirror")
    broken = threading.Event()
    real = eng.enhance_stage.enhancer.enhance

    def enhance(crop):
        if broken.is_set():
            raise RuntimeError("GPU fell off the bus")
        return real(crop)

    eng.enhance_stage.enhancer.enhance = enhance
    eng.start(ImageSource(astronaut, fps=60), ["null"])
    try:
        broken.set()
        n = eng.metrics.counter("errors.enhance")
        assert eng.metrics.wait_for("errors.enhance", n + 3, 120)
        v = eng.snapshot()["health"]
        assert any("enhance: the face enhancer fails" in r and "GPU fell off the bus" in r for r in v["reasons"])
        assert v["level"] in ("yellow", "red")
        assert not any(i["level"] == "error" and i["source"] == "enhance" for i in eng.status().issues)
        broken.clear()
        runs = eng.metrics.counter("enhance.runs")
        assert eng.metrics.wait_for("enhance.runs", runs + 3, 120)
        assert eng.metrics.wait_for("frames.out", eng.metrics.counter("frames.out") + 3, 120)
        assert not any("GPU fell off" in p for p in eng.status().problems)  # it recovered: gone
    finally:
        eng.stop()


def test_a_frame_held_for_the_voice_is_not_slow_video():
    """With a voice path the output latency includes the deliberate A/V hold: the verdict judges
    the video path's own latency (video.ready), and the ladder's lower frame rate is not a drop."""
    from mirage_desktop.control.health import verdict

    def snap(ready_p95):
        return {"status": {"running": True, "issues": []}, "gauges": {"fps": 30.0},
                "counters": {"frames.out": 100, "frames.in": 100, "dropped.adapt_fps": 50},
                "stages": {"total": {"count": 100, "p95": 250.0}, "video.ready": {"count": 100, "p95": ready_p95}}}

    assert verdict(snap(12.0))["level"] == "green"
    assert verdict(snap(120.0))["level"] == "yellow"
