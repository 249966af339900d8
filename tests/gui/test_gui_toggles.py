"""Each live toggle reaches the running engine without restarting the stream."""

from __future__ import annotations

import numpy as np
import pytest


def _run(qtbot, win):
    win.start()
    qtbot.waitUntil(lambda: win.engine.running, timeout=10000)
    qtbot.waitUntil(lambda: win.controller.feed.frames_in > 2, timeout=10000)
    return win.engine.pipeline


CASES = [
    ("enable_swap", lambda w: w.toggles.swap.click(), False),
    ("enable_mouth_mask", lambda w: w.toggles.mouth.click(), True),
    ("enable_ai_mark", lambda w: w.toggles.mark.click(), False),
    ("max_faces", lambda w: w.toggles.max_faces.setValue(3), 3),
    ("detect_interval", lambda w: w.toggles.detect_interval.setValue(9), 9),
    ("det_size", lambda w: w.toggles.det_size.setCurrentIndex(w.toggles.det_size.findData(320)), 320),
    ("codeformer_fidelity", lambda w: w.toggles.fidelity.slider.setValue(10), 0.5),
    ("enable_enhancer", lambda w: w.toggles.enhancer.click(), True),
    ("enable_color_transfer", lambda w: w.toggles.color.click(), True),
    ("enable_smoothing", lambda w: w.toggles.smoothing.click(), False),
    ("enable_scrfd", lambda w: w.toggles.scrfd.click(), False),
]


def test_every_enable_flag_has_a_live_control(qtbot, make_window):
    """Every MIRAGE_ENABLE_* flag can be switched from the window, and the list above tries each."""
    import dataclasses

    from mirage_desktop.config import Settings

    win = make_window()
    flags = {f.name for f in dataclasses.fields(Settings) if f.name.startswith("enable_")}
    controls = set(win.toggles.controls) | set(win.toggles.voice.values())
    assert flags <= controls, flags - controls
    assert flags - {"enable_voice"} <= {c[0] for c in CASES}


@pytest.mark.parametrize("name,act,value", CASES, ids=[c[0] for c in CASES])
def test_toggle_reaches_the_running_engine(qtbot, make_window, name, act, value):
    win = make_window()
    pipeline = _run(qtbot, win)
    assert getattr(win.engine.settings, name) != value
    act(win)
    qtbot.waitUntil(lambda: getattr(win.engine.settings, name) == value, timeout=5000)
    qtbot.waitUntil(lambda: getattr(pipeline.opts, name) == value, timeout=5000)
    assert win.engine.pipeline is pipeline, "the stream was restarted"
    if name == "detect_interval":
        assert pipeline.scheduler.interval == 9
    # frames keep flowing after the change
    n = win.controller.feed.frames_in
    qtbot.waitUntil(lambda: win.controller.feed.frames_in > n + 2, timeout=5000)


def test_ai_mark_toggle_changes_the_output(qtbot, make_window, astronaut):
    """Off → the corner of the output equals the input; on → the badge is drawn there."""
    win = make_window()
    win.toggles.swap.click()  # keep the face out of it
    _run(qtbot, win)
    frames = []
    win.engine.subscribe_frames(lambda pkt: frames.append((pkt.frame, pkt.original)), want_original=True)

    def corner_differs():
        f, o = frames[-1]
        return np.abs(f[-60:, -60:].astype(int) - o[-60:, -60:].astype(int)).sum() > 0

    qtbot.waitUntil(lambda: bool(frames) and corner_differs(), timeout=5000)  # on by default
    win.toggles.mark.click()
    qtbot.waitUntil(lambda: not win.engine.settings.enable_ai_mark, timeout=5000)
    # frames already in the pipeline still carry the mark; the first one made after the switch does not
    qtbot.waitUntil(lambda: bool(frames) and not corner_differs(), timeout=5000)
    n = len(frames)
    qtbot.waitUntil(lambda: len(frames) > n + 3, timeout=5000)
    assert not any(np.abs(f[-60:, -60:].astype(int) - o[-60:, -60:].astype(int)).sum() for f, o in frames[n:])


def test_voice_controls_reach_the_engine_settings(qtbot, make_window):
    win = make_window()
    assert win.toggles.voice.title() == "Voice"
    win.toggles.voice.pitch.slider.setValue(win.toggles.voice.pitch.slider.value() + 4)
    qtbot.waitUntil(lambda: win.engine.settings.voice_pitch == 2.0, timeout=5000)
    win.toggles.voice.formant.set_value(1.2)
    win.toggles.voice.formant.slider.setValue(win.toggles.voice.formant.slider.value() + 1)
    qtbot.waitUntil(lambda: abs(win.engine.settings.voice_formant - 1.25) < 1e-6, timeout=5000)


def test_invalid_option_is_reported_not_applied(qtbot, make_window):
    win = make_window()
    win.set_option("det_size", 123)
    assert "det_size" in win.last_error
    assert win.engine.settings.det_size == 640
