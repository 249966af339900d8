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
    ("enable_parser", lambda w: w.toggles.parser.click(), True),
    ("parser_regions", lambda w: w.toggles.regions.boxes["nose"].click(), "skin,brows,eyes,mouth,lips"),
    ("parser_interval", lambda w: w.toggles.parser_interval.setValue(5), 5),
    ("mask_smoothing", lambda w: w.toggles.mask_smoothing.slider.setValue(4), 0.2),
    ("pixel_boost", lambda w: w.toggles.boost.setCurrentIndex(w.toggles.boost.findData(256)), 256),
    ("color_smoothing", lambda w: w.toggles.color_smoothing.slider.setValue(2), 0.1),
    ("track_hold_frames", lambda w: w.toggles.track_hold.setValue(12), 12),
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


# ---- each control's range is its setting's rule (config.RULES) --------------------------------
from mirage_desktop.gui.toggles import CONTROLLED  # noqa: E402


def test_every_control_is_in_the_list_the_range_test_covers(qtbot):
    from mirage_desktop.config import Settings
    from mirage_desktop.gui.toggles import LiveControls

    w = LiveControls(Settings())
    qtbot.addWidget(w)
    assert sorted(w.controls) == sorted(CONTROLLED)  # a new control must be added to CONTROLLED
    assert set(w.values()) <= set(CONTROLLED)


@pytest.mark.parametrize("name", CONTROLLED)
def test_control_range_equals_the_settings_rule(qtbot, name):
    from PySide6.QtWidgets import QCheckBox

    from mirage_desktop import config
    from mirage_desktop.gui.toggles import FileChooser, LiveControls, widget_range

    w = LiveControls(config.Settings())
    qtbot.addWidget(w)
    control, rule = w.controls[name], config.RULES[name]
    emitted = []
    w.option_changed.connect(lambda n, v: emitted.append((n, v)))
    if rule.kind == "bool":
        assert isinstance(control, QCheckBox)
    elif rule.choices:
        assert widget_range(control) == tuple(rule.choices)
        control.setCurrentIndex(control.count() - 1)
        assert emitted[-1] == (name, rule.choices[-1])
    elif rule.kind in ("int", "float"):
        assert widget_range(control) == (rule.lo, rule.hi)
        # the ends of the widget are values the setting accepts, sent as they are
        slider = getattr(control, "slider", control)
        for end, want in ((slider.maximum(), rule.hi), (slider.minimum(), rule.lo)):
            slider.setValue(end)
            assert emitted[-1] == (name, want) and config.check(name, emitted[-1][1]) == want
    elif rule.kind == "regions":  # a check box per region; every value it sends is one the rule accepts
        from mirage_desktop.gui.toggles import RegionChooser

        assert isinstance(control, RegionChooser)
        for cb in control.boxes.values():
            cb.setChecked(not cb.isChecked())
            assert config.check(name, emitted[-1][1]) == emitted[-1][1] == control.value()
        for cb in control.boxes.values():
            cb.setChecked(False)
        assert control.value() and config.check(name, control.value())  # the last region stays chosen
    else:  # a file
        assert rule.kind == "text" and isinstance(control, FileChooser)
    # the control shows the default setting
    if rule.kind in ("int", "float") and not rule.choices:
        assert widget_range(control)[0] <= getattr(config.Settings(), name) <= widget_range(control)[1]


def test_output_choices_are_values_their_settings_accept(qtbot, make_window):
    from mirage_desktop import config

    win = make_window()
    for combo, names in ((win.fps, ("output_fps",)), (win.resolution, ("output_width", "output_height"))):
        for i in range(combo.count()):
            data = combo.itemData(i)
            values = [int(x) for x in str(data).split("x")] if "x" in str(data) else [data]
            for n, v in zip(names, values):
                assert config.check(n, v) == v


# ---- reference person (mirage run --match) -------------------------------------------------
def test_reference_person_is_chosen_used_and_cleared(qtbot, make_window, grace_hopper_path, tmp_path):
    import cv2

    win = make_window()
    pipeline = _run(qtbot, win)
    assert win.engine.reference is None
    ref = win.toggles.reference
    ref.choose_file = lambda: str(grace_hopper_path)
    ref.choose.click()
    qtbot.waitUntil(lambda: win.engine.reference is not None)
    qtbot.waitUntil(lambda: "grace_hopper.jpg" in win.toggles.reference_status.text())
    assert pipeline.reference is win.engine.reference  # the running stream matches against it
    assert ref.path() == str(grace_hopper_path) and ref.clear.isEnabled()
    # the threshold: shown and sent to the engine
    assert win.toggles.match_threshold.value() == win.engine.settings.match_threshold
    win.toggles.match_threshold.set_value(0.5)
    win.toggles.match_threshold.slider.setValue(win.toggles.match_threshold.slider.value() + 1)
    qtbot.waitUntil(lambda: abs(win.engine.settings.match_threshold - 0.51) < 1e-9)
    # a photo without a face: one line, and the person chosen before stays
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    before = win.engine.reference
    ref.choose_file = lambda: str(blank)
    ref.choose.click()
    qtbot.waitUntil(lambda: "wall.png" in win.last_error)
    assert "\n" not in win.last_error
    qtbot.waitUntil(lambda: ref.path() == str(grace_hopper_path))
    assert win.engine.reference is before
    # cleared: any face again
    ref.clear.click()
    qtbot.waitUntil(lambda: win.engine.reference is None)
    assert pipeline.reference is None
    assert ref.label.text() == "anyone" and not ref.clear.isEnabled()
    assert win.engine.pipeline is pipeline, "the stream was restarted"


# ---- the RVC voice converter ---------------------------------------------------------------
def test_rvc_controls_set_the_typed_voice_settings(qtbot, make_window, tmp_path, settle):
    win = make_window()
    v = win.toggles.voice
    assert not v.form.isRowVisible(v.model)  # the built-in converter needs no model files
    v.converter.setCurrentIndex(v.converter.findData("rvc"))
    assert v.form.isRowVisible(v.model) and v.form.isRowVisible(v.speaker)
    files = {}
    for name, chooser in (("voice_model", v.model), ("voice_encoder", v.encoder), ("voice_rmvpe", v.rmvpe)):
        p = tmp_path / f"{name}.onnx"
        p.write_bytes(b"onnx")
        files[name] = str(p)
        chooser.choose_file = lambda p=p: str(p)
        chooser.choose.click()
    v.f0_method.setCurrentIndex(v.f0_method.findData("rmvpe"))
    v.speaker.setValue(3)
    qtbot.waitUntil(lambda: win.engine.settings.voice_speaker == 3)
    s = win.engine.settings
    assert (s.voice_converter, s.voice_f0_method, s.voice_speaker) == ("rvc", "rmvpe", 3)
    assert {k: getattr(s, k) for k in files} == files
    v.rmvpe.clear.click()
    qtbot.waitUntil(lambda: win.engine.settings.voice_rmvpe == "")
    settle(win)
    win.close()
    # saved, and shown again by the next window
    win2 = make_window()
    v2 = win2.toggles.voice
    assert v2.converter.currentData() == "rvc" and v2.model.path() == files["voice_model"]
    assert v2.encoder.path() == files["voice_encoder"] and v2.rmvpe.path() == ""
    assert v2.f0_method.currentData() == "rmvpe" and v2.speaker.value() == 3
